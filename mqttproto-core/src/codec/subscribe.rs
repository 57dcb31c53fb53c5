//! SUBSCRIBE (section 3.8) and UNSUBSCRIBE (section 3.10).

use bytes::{BufMut, BytesMut};

use super::properties::{block_len, SubscribeProperties, UnsubscribeProperties};
use super::wire::{put_prefixed, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicFilter;
use crate::types::{
    PacketId, PacketType, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};

/// One entry of a SUBSCRIBE: a topic filter and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic filter.
    pub filter: TopicFilter,
    /// Subscription options.
    pub options: SubscriptionOptions,
}

impl Subscription {
    /// A subscription with the given QoS and default options.
    pub fn new(filter: TopicFilter, qos: QoS) -> Self {
        Subscription {
            filter,
            options: SubscriptionOptions::with_qos(qos),
        }
    }
}

/// SUBSCRIBE: one or more topic filters [MQTT-3.8.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties.
    pub properties: SubscribeProperties,
    /// The filters and their options, in order.
    pub subscriptions: Vec<Subscription>,
}

fn read_filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    let packet = r.packet();
    TopicFilter::from_bytes(r.binary()?)
        .map_err(|error| DecodeError::InvalidTopicFilter { packet, error })
}

fn read_options(byte: u8) -> Result<SubscriptionOptions, DecodeError> {
    if byte & 0xC0 != 0 {
        return Err(DecodeError::ReservedSubscriptionOptions(byte));
    }
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling: RetainHandling::from_u8((byte >> 4) & 0x03)
            .ok_or(DecodeError::InvalidRetainHandling)?,
    })
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, _version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = SubscribeProperties::read(r)?;
        if r.is_empty() {
            return Err(DecodeError::EmptySubscribe);
        }
        let mut subscriptions = Vec::with_capacity(r.count_prefixed(1));
        while !r.is_empty() {
            let filter = read_filter(r)?;
            let options = read_options(r.u8()?)?;
            if options.no_local && filter.is_shared() {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::NoFilters(PacketType::Subscribe));
        }
        if self
            .subscriptions
            .iter()
            .any(|s| s.options.no_local && s.filter.is_shared())
        {
            return Err(EncodeError::NoLocalOnSharedSubscription);
        }
        self.properties.check()
    }

    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        2 + block_len(self.properties.encoded_len())
            + self
                .subscriptions
                .iter()
                .map(|s| 3 + s.filter.len())
                .sum::<usize>()
    }

    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        buf.put_u16(self.packet_id.get());
        self.properties.write(buf);
        // Each options byte goes out with the next filter's length: two appends per filter.
        let mut options: Option<u8> = None;
        for s in &self.subscriptions {
            let [h, l] = (s.filter.len() as u16).to_be_bytes();
            match options {
                Some(o) => buf.put_slice(&[o, h, l]),
                None => buf.put_slice(&[h, l]),
            }
            buf.put_slice(s.filter.as_bytes());
            options = Some(s.options.to_byte());
        }
        if let Some(o) = options {
            buf.put_u8(o);
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters [MQTT-3.10.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties.
    pub properties: UnsubscribeProperties,
    /// The filters, in order.
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, _version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = UnsubscribeProperties::read(r)?;
        if r.is_empty() {
            return Err(DecodeError::EmptyUnsubscribe);
        }
        let mut filters = Vec::with_capacity(r.count_prefixed(0));
        while !r.is_empty() {
            filters.push(read_filter(r)?);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::NoFilters(PacketType::Unsubscribe));
        }
        self.properties.check()
    }

    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        2 + block_len(self.properties.encoded_len())
            + self.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
    }

    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        buf.put_u16(self.packet_id.get());
        self.properties.write(buf);
        for f in &self.filters {
            put_prefixed(buf, f.as_bytes());
        }
    }
}
