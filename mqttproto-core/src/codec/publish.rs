//! PUBLISH (section 3.3).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::properties::{block_len, PropertiesBox, PublishProperties};
use super::wire::{put_prefixed, put_varint, varint_len, Reader, MAX_REMAINING_LENGTH};
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

    /// Decodes a PUBLISH from its body (the packet after the fixed header) and the fixed header's
    /// flags.
    ///
    /// This is the hot path of every connection, so it works on the body's bytes directly instead
    /// of through the generic [`Reader`]: the topic is checked in place and sliced once, and the
    /// payload takes over the body's reference. The checks and their order are those of the other
    /// packets' decoders: flags, topic (length, then content), packet id, properties, then the
    /// rules that depend on them.
    #[inline]
    pub(crate) fn decode(mut body: Bytes, flags: u8) -> Result<Publish, DecodeError> {
        let truncated = || DecodeError::Truncated {
            packet: PacketType::Publish,
        };
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let retain = flags & 0x01 != 0;

        let b: &[u8] = &body;
        let [h, l, ..] = *b else {
            return Err(truncated());
        };
        let topic_end = 2 + usize::from(u16::from_be_bytes([h, l]));
        let Some(topic) = b.get(2..topic_end) else {
            return Err(truncated());
        };
        TopicName::check_allow_empty(topic).map_err(|error| DecodeError::InvalidTopicName {
            packet: PacketType::Publish,
            error,
        })?;
        let mut pos = topic_end;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            let [h, l] = *b.get(pos..pos + 2).ok_or_else(truncated)? else {
                return Err(truncated());
            };
            pos += 2;
            Some(
                PacketId::new(u16::from_be_bytes([h, l])).ok_or(DecodeError::ZeroPacketId {
                    packet: PacketType::Publish,
                })?,
            )
        };
        // Most messages carry no properties: a Property Length of 0 needs no property reader.
        let no_properties = b.get(pos) == Some(&0);
        let topic = TopicName::from_validated(body.slice(2..topic_end));
        let (properties, payload) = if no_properties {
            body.advance(pos + 1);
            (PropertiesBox::none(), body)
        } else {
            let mut r = Reader::new_at(body, pos, PacketType::Publish);
            let mut props = Box::<PublishProperties>::default();
            props.read_into(&mut r)?;
            (PropertiesBox::from_box(props), r.rest())
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::MissingTopicName);
        }
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
        let props = self.properties.get();
        if self.topic.is_empty() && props.is_none_or(|p| p.topic_alias.is_none()) {
            return Err(EncodeError::MissingTopicName);
        }
        match props {
            Some(p) => p.check(),
            None => Ok(()),
        }
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

    /// Validates and appends the whole packet, fixed header included: what
    /// [`Packet::encode`](super::Packet::encode) does for a PUBLISH, with every length computed
    /// once and one reservation.
    #[inline(always)]
    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_parts(buf, true)
    }

    /// Validates the packet and appends everything but its payload to `buf`: the fixed header
    /// (whose Remaining Length counts the payload), the topic, the packet identifier and the
    /// properties. On the wire, [`payload`](Self::payload) follows these bytes.
    ///
    /// This is the encoder for a vectored write that does not copy the payload: write `buf`'s
    /// new bytes, then the payload (a shared `Bytes`, which any number of copies of the message
    /// can reference). [`Packet::encode`](super::Packet::encode) gives the same bytes in one
    /// buffer. Nothing is written on error.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use mqttproto_core::codec::{Packet, Publish};
    /// use mqttproto_core::topic::TopicName;
    /// use mqttproto_core::ProtocolVersion;
    ///
    /// let publish = Publish::new(TopicName::try_from("a/b").unwrap(), vec![7u8; 1000]);
    /// let mut head = BytesMut::new();
    /// publish.encode_head(&mut head, ProtocolVersion::V5).unwrap();
    /// assert_eq!(head.len(), 1 + 2 + 2 + 3 + 1); // header, topic length, topic, no properties
    ///
    /// let mut whole = BytesMut::new();
    /// Packet::Publish(publish.clone()).encode(&mut whole, ProtocolVersion::V5).unwrap();
    /// assert_eq!(&whole[..head.len()], &head[..]);
    /// assert_eq!(&whole[head.len()..], &publish.payload[..]);
    /// ```
    pub fn encode_head(
        &self,
        buf: &mut BytesMut,
        _version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        self.encode_parts(buf, false)
    }

    #[inline(always)]
    fn encode_parts(&self, buf: &mut BytesMut, with_payload: bool) -> Result<(), EncodeError> {
        self.validate()?;
        let props = self.properties.get().filter(|p| !p.is_empty());
        let props_len = props.map_or(0, PublishProperties::encoded_len);
        let mut remaining = 2 + self.topic.len() + block_len(props_len) + self.payload.len();
        if self.packet_id.is_some() {
            remaining += 2;
        }
        if remaining > MAX_REMAINING_LENGTH as usize {
            return Err(EncodeError::PacketTooLarge(remaining));
        }
        let mut reserve = 1 + varint_len(remaining as u32) + remaining;
        if !with_payload {
            reserve -= self.payload.len();
        }
        buf.reserve(reserve);
        // Fixed-size appends for the usual sizes: each is one capacity check and one store.
        let first = ((PacketType::Publish as u8) << 4) | self.flags();
        let r = remaining as u32;
        let [t0, t1] = (self.topic.len() as u16).to_be_bytes();
        if r < 0x80 {
            buf.put_slice(&[first, r as u8, t0, t1]);
        } else if r < 0x4000 {
            buf.put_slice(&[first, (r as u8) | 0x80, (r >> 7) as u8, t0, t1]);
        } else {
            buf.put_u8(first);
            put_varint(buf, r);
            buf.put_slice(&[t0, t1]);
        }
        buf.put_slice(self.topic.as_bytes());
        match (self.packet_id, props) {
            (Some(id), None) => {
                let [i0, i1] = id.get().to_be_bytes();
                buf.put_slice(&[i0, i1, 0]);
            }
            (None, None) => buf.put_u8(0),
            (Some(id), Some(p)) if props_len < 0x80 => {
                let [i0, i1] = id.get().to_be_bytes();
                buf.put_slice(&[i0, i1, props_len as u8]);
                p.write_body(buf);
            }
            (Some(id), Some(p)) if props_len < 0x4000 => {
                let [i0, i1] = id.get().to_be_bytes();
                buf.put_slice(&[i0, i1, (props_len as u8) | 0x80, (props_len >> 7) as u8]);
                p.write_body(buf);
            }
            (id, Some(p)) => {
                if let Some(id) = id {
                    buf.put_u16(id.get());
                }
                p.write_sized(buf, props_len);
            }
        }
        if with_payload {
            buf.put_slice(&self.payload);
        }
        Ok(())
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
