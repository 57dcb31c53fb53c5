//! The MQTT 5 packet codec: every control packet, every property, streaming decode.
//!
//! * [`decode`] takes complete packets off the front of an input buffer. A partial packet is not an
//!   error: `Ok(None)` leaves its bytes buffered until more arrive. A packet whose fixed header
//!   declares a size above the limit is rejected before its body is buffered.
//! * Strings, topics and payloads of a decoded packet are [`Bytes`] slices of the received frame.
//! * [`Packet::encode`] is the exact inverse; [`Packet::encoded_len`] computes the size without
//!   encoding; [`Packet::shrink_to`] drops the Reason String and User Properties where the
//!   specification allows, to fit a peer's Maximum Packet Size.

mod ack;
mod connect;
mod control;
mod properties;
mod publish;
mod subscribe;
pub(crate) mod wire;

pub use ack::{PubAck, PubComp, PubRec, PubRel, PublishAck, SubAck, UnsubAck};
pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PropertiesBox, PropertySet, PublishProperties, SubscribeProperties, UnsubscribeProperties,
    WillProperties,
};
pub use publish::Publish;
pub use subscribe::{Subscribe, Subscription, Unsubscribe};
pub use wire::{varint_len, MAX_REMAINING_LENGTH};

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::{PacketType, ProtocolVersion};
use wire::Reader;

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT
    Connect(Box<Connect>),
    /// CONNACK (boxed: its properties are large, and it is sent once per connection)
    ConnAck(Box<ConnAck>),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK
    PubAck(PubAck),
    /// PUBREC
    PubRec(PubRec),
    /// PUBREL
    PubRel(PubRel),
    /// PUBCOMP
    PubComp(PubComp),
    /// SUBSCRIBE
    Subscribe(Subscribe),
    /// SUBACK
    SubAck(SubAck),
    /// UNSUBSCRIBE
    Unsubscribe(Unsubscribe),
    /// UNSUBACK
    UnsubAck(UnsubAck),
    /// PINGREQ
    PingReq,
    /// PINGRESP
    PingResp,
    /// DISCONNECT
    Disconnect(Disconnect),
    /// AUTH
    Auth(Auth),
}

/// What the fixed header of a packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type.
    pub packet_type: PacketType,
    /// Low nibble of the first byte.
    pub flags: u8,
    /// Remaining length: the size of the variable header and payload.
    pub remaining_length: usize,
    /// Size of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FixedHeader {
    /// The whole packet's size.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length
    }
}

/// Parses the fixed header at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. Reserved flags are checked here [MQTT-2.1.3-1], so an
/// invalid packet is rejected before its body arrives.
#[inline]
pub fn decode_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(first >> 4).ok_or(DecodeError::InvalidPacketType)?;
    let flags = first & 0x0F;
    if let Some(required) = packet_type.required_flags() {
        if flags != required {
            return Err(DecodeError::InvalidFixedHeaderFlags {
                packet: packet_type,
                flags,
            });
        }
    }
    match wire::read_varint(&buf[1..])? {
        None => Ok(None),
        Some((remaining_length, n)) => Ok(Some(FixedHeader {
            packet_type,
            flags,
            remaining_length: remaining_length as usize,
            header_len: 1 + n,
        })),
    }
}

/// The most `decode` reserves ahead of the bytes that arrived for a partial packet.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Takes one complete packet off the front of `buf`.
///
/// * `Ok(Some(packet))`: the packet's bytes were consumed.
/// * `Ok(None)`: `buf` holds only part of a packet; nothing was consumed.
/// * `Err(e)`: the packet is malformed or breaks a rule; answer with `e.reason_code()` and close.
///   A packet larger than `max_packet_size` is rejected from its fixed header alone.
///
/// `version` is the protocol version of the connection; a CONNECT carries its own.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = decode_fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header.packet_len();
    if size > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        // Make room for the rest of the packet, but never let a declared length alone (which a
        // peer controls) allocate more than a bounded amount ahead of the bytes that arrived.
        buf.reserve((size - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    if header.remaining_length <= 3 {
        if let Some(result) = decode_short(header.packet_type, &buf[header.header_len..size]) {
            buf.advance(size);
            return result.map(Some);
        }
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header.header_len);
    if header.packet_type == PacketType::Publish {
        // The hot path, without the intermediate `Result<Packet>` of `decode_body`.
        return Publish::decode(frame, header.flags).map(|p| Some(Packet::Publish(p)));
    }
    decode_other(header.packet_type, header.flags, frame, version).map(Some)
}

/// Decodes one packet from a buffer that holds exactly one whole packet.
pub fn decode_packet(mut frame: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let header = decode_fixed_header(&frame)?.ok_or(DecodeError::Truncated {
        packet: PacketType::from_u8(frame.first().copied().unwrap_or(0) >> 4)
            .unwrap_or(PacketType::Connect),
    })?;
    if frame.len() != header.packet_len() {
        return Err(if frame.len() < header.packet_len() {
            DecodeError::Truncated {
                packet: header.packet_type,
            }
        } else {
            DecodeError::TrailingBytes {
                packet: header.packet_type,
            }
        });
    }
    frame.advance(header.header_len);
    decode_body(header.packet_type, header.flags, frame, version)
}

#[inline]
fn decode_body(
    packet_type: PacketType,
    flags: u8,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    if packet_type == PacketType::Publish {
        // The payload takes the rest of the body: nothing can trail.
        return Publish::decode(body, flags).map(Packet::Publish);
    }
    decode_other(packet_type, flags, body, version)
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP without properties, PINGREQ and PINGRESP, read from the
/// input buffer in place: a shared `Bytes` for a frame of 2 to 5 bytes would cost two atomic
/// reference-count operations, more than the decode itself. These are the acknowledgements a
/// broker receives for every QoS 1/2 delivery. `None` for anything else, which takes the general
/// path; the checks and errors are those of the general path.
#[inline]
fn decode_short(packet: PacketType, body: &[u8]) -> Option<Result<Packet, DecodeError>> {
    match (packet, body) {
        (PacketType::PingReq, []) => Some(Ok(Packet::PingReq)),
        (PacketType::PingResp, []) => Some(Ok(Packet::PingResp)),
        (
            PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp,
            [h, l, code @ ..],
        ) if code.len() <= 1 => {
            let Some(packet_id) = crate::types::PacketId::new(u16::from_be_bytes([*h, *l])) else {
                return Some(Err(DecodeError::ZeroPacketId { packet }));
            };
            let reason_code = match code {
                [code] => match crate::types::ReasonCode::from_u8(*code) {
                    Some(rc) if rc.is_valid_for(packet) => rc,
                    _ => {
                        return Some(Err(DecodeError::InvalidReasonCode {
                            packet,
                            code: *code,
                        }))
                    }
                },
                _ => crate::types::ReasonCode::Success,
            };
            let ack = PublishAck::with_reason(packet_id, reason_code);
            Some(Ok(match packet {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }))
        }
        _ => None,
    }
}

fn decode_other(
    packet_type: PacketType,
    flags: u8,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body, packet_type);
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(Connect::decode(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(Box::new(ConnAck::decode(&mut r, version)?)),
        PacketType::Publish => Packet::Publish(Publish::decode(r.rest(), flags)?),
        PacketType::PubAck => Packet::PubAck(PublishAck::decode(&mut r, version)?),
        PacketType::PubRec => Packet::PubRec(PublishAck::decode(&mut r, version)?),
        PacketType::PubRel => Packet::PubRel(PublishAck::decode(&mut r, version)?),
        PacketType::PubComp => Packet::PubComp(PublishAck::decode(&mut r, version)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(&mut r, version)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(&mut r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(&mut r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(&mut r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(&mut r, version)?),
        PacketType::Auth => Packet::Auth(Auth::decode(&mut r, version)?),
    };
    r.finish()?;
    Ok(packet)
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.flags(),
            other => other.packet_type().required_flags().unwrap_or(0),
        };
        ((self.packet_type() as u8) << 4) | flags
    }

    /// The size of the variable header and payload.
    pub fn remaining_len(&self, version: ProtocolVersion) -> usize {
        match self {
            Packet::Connect(p) => p.remaining_len(version),
            Packet::ConnAck(p) => p.remaining_len(version),
            Packet::Publish(p) => p.remaining_len(version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.remaining_len(version)
            }
            Packet::Subscribe(p) => p.remaining_len(version),
            Packet::SubAck(p) => p.remaining_len(version),
            Packet::Unsubscribe(p) => p.remaining_len(version),
            Packet::UnsubAck(p) => p.remaining_len(version),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(p) => p.remaining_len(version),
            Packet::Auth(p) => p.remaining_len(version),
        }
    }

    /// The size of the whole encoded packet, computed without encoding it.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1 + varint_len(remaining as u32) + remaining
    }

    /// Checks that the packet can be encoded: field lengths, packet ids, reason codes.
    pub fn validate(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        self.checked_remaining_len(version).map(|_| ())
    }

    fn checked_remaining_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let ty = self.packet_type();
        match self {
            Packet::Connect(p) => p.validate()?,
            Packet::ConnAck(p) => p.validate()?,
            Packet::Publish(p) => p.validate()?,
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                ack::check_reason(ty, p.reason_code)?
            }
            Packet::Subscribe(p) => p.validate()?,
            Packet::SubAck(p) => p.validate()?,
            Packet::Unsubscribe(p) => p.validate()?,
            Packet::UnsubAck(p) => p.validate()?,
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.validate()?,
            Packet::Auth(p) => p.validate()?,
        }
        let remaining = self.remaining_len(version);
        if remaining > MAX_REMAINING_LENGTH as usize {
            return Err(EncodeError::PacketTooLarge(remaining));
        }
        Ok(remaining)
    }

    /// Appends the encoded packet to `buf`.
    ///
    /// The packet is checked first ([`validate`](Self::validate)); on error nothing is written.
    #[inline]
    pub fn encode(&self, buf: &mut BytesMut, version: ProtocolVersion) -> Result<(), EncodeError> {
        if let Packet::Publish(p) = self {
            // The hot path: one pass, every length computed once.
            return p.encode(buf);
        }
        self.encode_other(buf, version)
    }

    fn encode_other(
        &self,
        buf: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        // The acknowledgements of every QoS 1/2 message, without properties: 4 or 5 fixed bytes
        // (the general path's bytes and checks). Here rather than in `encode`, which must stay
        // small enough to inline the PUBLISH encoder into its callers.
        let (ack, first, packet) = match self {
            Packet::PubAck(a) => (a, 0x40, PacketType::PubAck),
            Packet::PubRec(a) => (a, 0x50, PacketType::PubRec),
            Packet::PubRel(a) => (a, 0x62, PacketType::PubRel),
            Packet::PubComp(a) => (a, 0x70, PacketType::PubComp),
            _ => return self.encode_general(buf, version),
        };
        if !ack.properties.is_empty() {
            return self.encode_general(buf, version);
        }
        ack::check_reason(packet, ack.reason_code)?;
        let [h, l] = ack.packet_id.get().to_be_bytes();
        // Reason code Success and no properties: the short form, without the reason code.
        let success = ack.reason_code == crate::types::ReasonCode::Success;
        buf.extend_from_slice(&[first, if success { 2 } else { 3 }, h, l]);
        if !success {
            buf.extend_from_slice(&[ack.reason_code as u8]);
        }
        Ok(())
    }

    fn encode_general(
        &self,
        buf: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        let remaining = self.checked_remaining_len(version)?;
        buf.reserve(1 + varint_len(remaining as u32) + remaining);
        buf.extend_from_slice(&[self.first_byte()]);
        wire::put_varint(buf, remaining as u32);
        let start = buf.len();
        match self {
            Packet::Connect(p) => p.write(buf, version),
            Packet::ConnAck(p) => p.write(buf, version),
            Packet::Publish(p) => p.write(buf, version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.write(buf, version)
            }
            Packet::Subscribe(p) => p.write(buf, version),
            Packet::SubAck(p) => p.write(buf, version),
            Packet::Unsubscribe(p) => p.write(buf, version),
            Packet::UnsubAck(p) => p.write(buf, version),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.write(buf, version),
            Packet::Auth(p) => p.write(buf, version),
        }
        debug_assert_eq!(buf.len() - start, remaining, "{:?}", self.packet_type());
        Ok(())
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len(version));
        self.encode(&mut buf, version)?;
        Ok(buf.freeze())
    }

    /// Makes the packet fit in `max_packet_size` bytes if the specification allows it to shrink.
    ///
    /// The Reason String goes first, then the User Properties, as the statements on those
    /// properties require (for example [MQTT-3.2.2-19, MQTT-3.2.2-20], [MQTT-3.14.2-3,
    /// MQTT-3.14.2-4], [MQTT-3.15.2-2, MQTT-3.15.2-3]). The properties of an application message
    /// (PUBLISH, CONNECT and its will) are never dropped [MQTT-3.3.2-17]. Returns whether the
    /// packet now fits; if not, the sender must not send it [MQTT-3.1.2-24, MQTT-3.1.2-25].
    pub fn shrink_to(&mut self, max_packet_size: u32, version: ProtocolVersion) -> bool {
        let max = max_packet_size as usize;
        if self.encoded_len(version) <= max {
            return true;
        }
        let Some((reason, _)) = self.droppable_properties() else {
            return false;
        };
        *reason = None;
        if self.encoded_len(version) <= max {
            return true;
        }
        if let Some((_, users)) = self.droppable_properties() {
            users.clear();
        }
        self.encoded_len(version) <= max
    }

    #[allow(clippy::type_complexity)]
    fn droppable_properties(
        &mut self,
    ) -> Option<(
        &mut Option<crate::string::MqttString>,
        &mut crate::types::UserProperties,
    )> {
        let (reason, users) = match self {
            Packet::ConnAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Packet::SubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Packet::UnsubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Packet::Disconnect(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Packet::Auth(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            _ => return None,
        };
        Some((reason, users))
    }
}
