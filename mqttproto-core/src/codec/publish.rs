//! PUBLISH (section 3.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{block_len, PropertiesBox, PublishProperties};
use super::wire::{put_prefixed, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicName;
use crate::types::{PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS};

/// PUBLISH: an application message.
///
/// The topic is empty only when the message names its topic through
/// [`PublishProperties::topic_alias`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP: this is a redelivery [MQTT-3.3.1-1]. Never set at QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name (no wildcards [MQTT-3.3.2-2]).
    pub topic: TopicName,
    /// Packet Identifier: present exactly when QoS is 1 or 2 [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    /// Payload, sharing the received frame's buffer.
    pub payload: Bytes,
    /// Properties, on the heap only when some are set: read and write them as if this were a
    /// [`PublishProperties`] (`publish.properties.topic_alias`); assign a whole set with
    /// `publish.properties = props.into()`.
    pub properties: PropertiesBox<PublishProperties>,
}

impl Publish {
    /// A QoS 0 message with no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Publish {
        Publish {
            topic,
            payload: payload.into(),
            ..Publish::default()
        }
    }

    pub(crate) fn flags(&self) -> u8 {
        ((self.dup as u8) << 3) | ((self.qos as u8) << 1) | self.retain as u8
    }

    #[inline]
    pub(crate) fn decode(
        r: &mut Reader,
        flags: u8,
        _version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let retain = flags & 0x01 != 0;
        let topic = TopicName::from_bytes_allow_empty(r.binary()?).map_err(|error| {
            DecodeError::InvalidTopicName {
                packet: PacketType::Publish,
                error,
            }
        })?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(r.packet_id()?)
        };
        // Most messages carry no properties: a Property Length of 0 needs no property reader.
        let properties = if r.skip_empty_properties() {
            PropertiesBox::none()
        } else {
            let mut props = Box::<PublishProperties>::default();
            props.read_into(r)?;
            PropertiesBox::from_box(props)
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::MissingTopicName);
        }
        let payload = r.rest();
        if properties.payload_format_indicator == Some(PayloadFormat::Utf8)
            && std::str::from_utf8(&payload).is_err()
        {
            return Err(DecodeError::PayloadFormatInvalid {
                packet: PacketType::Publish,
                packet_id,
            });
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            payload,
            properties,
        })
    }

    #[inline]
    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        if (self.qos == QoS::AtMostOnce) != self.packet_id.is_none() {
            return Err(EncodeError::PacketIdMismatch);
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::DupOnQoS0);
        }
        if self.topic.is_empty() && self.properties.topic_alias.is_none() {
            return Err(EncodeError::MissingTopicName);
        }
        self.properties.check()
    }

    #[inline]
    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.packet_id.is_some() {
            n += 2;
        }
        if self.properties.is_empty() {
            n + 1
        } else {
            n + block_len(self.properties.encoded_len())
        }
    }

    #[inline]
    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        put_prefixed(buf, self.topic.as_bytes());
        if let Some(id) = self.packet_id {
            buf.put_u16(id.get());
        }
        if self.properties.is_empty() {
            // Property Length 0, without sizing the properties again.
            buf.put_u8(0);
        } else {
            self.properties.write(buf);
        }
        buf.extend_from_slice(&self.payload);
    }
}
