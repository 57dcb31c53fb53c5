//! PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.4 to 3.7), SUBACK (3.9) and UNSUBACK (3.11).

use bytes::{BufMut, BytesMut};

use super::properties::{block_len, AckProperties};
use super::wire::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::types::{PacketId, PacketType, ProtocolVersion, ReasonCode};

/// Reads a reason code and checks it is valid for the packet being read (section 2.4).
pub(crate) fn read_reason(r: &mut Reader) -> Result<ReasonCode, DecodeError> {
    let packet = r.packet();
    let code = r.u8()?;
    match ReasonCode::from_u8(code) {
        Some(rc) if rc.is_valid_for(packet) => Ok(rc),
        _ => Err(DecodeError::InvalidReasonCode { packet, code }),
    }
}

/// Checks that a reason code to be sent is valid for the packet type.
#[inline]
pub(crate) fn check_reason(packet: PacketType, code: ReasonCode) -> Result<(), EncodeError> {
    if code.is_valid_for(packet) {
        Ok(())
    } else {
        Err(EncodeError::InvalidReasonCode { packet, code })
    }
}

/// The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP.
///
/// When the reason code is Success and there are no properties, the short two-byte form is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The packet identifier of the PUBLISH (or PUBREC/PUBREL) acknowledged [MQTT-2.2.1-5].
    pub packet_id: PacketId,
    /// Reason code.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AckProperties,
}

/// PUBACK: QoS 1 acknowledgement.
pub type PubAck = PublishAck;
/// PUBREC: QoS 2 delivery part 1.
pub type PubRec = PublishAck;
/// PUBREL: QoS 2 delivery part 2.
pub type PubRel = PublishAck;
/// PUBCOMP: QoS 2 delivery part 3.
pub type PubComp = PublishAck;

impl PublishAck {
    /// A success acknowledgement with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        PublishAck {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    /// An acknowledgement with a reason code and no properties.
    pub fn with_reason(packet_id: PacketId, reason_code: ReasonCode) -> Self {
        PublishAck {
            packet_id,
            reason_code,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, _version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        if r.is_empty() {
            return Ok(Self::new(packet_id));
        }
        let reason_code = read_reason(r)?;
        let properties = if r.is_empty() {
            AckProperties::default()
        } else {
            AckProperties::read(r)?
        };
        Ok(PublishAck {
            packet_id,
            reason_code,
            properties,
        })
    }

    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        if !self.properties.is_empty() {
            3 + block_len(self.properties.encoded_len())
        } else if self.reason_code != ReasonCode::Success {
            3
        } else {
            2
        }
    }

    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        buf.put_u16(self.packet_id.get());
        if !self.properties.is_empty() {
            buf.put_u8(self.reason_code as u8);
            self.properties.write(buf);
        } else if self.reason_code != ReasonCode::Success {
            buf.put_u8(self.reason_code as u8);
        }
    }
}

macro_rules! reason_list_ack {
    ($(#[$meta:meta])* $name:ident, $ptype:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The packet identifier of the request acknowledged [MQTT-2.2.1-6].
            pub packet_id: PacketId,
            /// Properties.
            pub properties: AckProperties,
            /// One reason code per topic filter of the request, in order.
            pub reason_codes: Vec<ReasonCode>,
        }

        impl $name {
            pub(crate) fn decode(
                r: &mut Reader,
                _version: ProtocolVersion,
            ) -> Result<Self, DecodeError> {
                let packet_id = r.packet_id()?;
                let properties = AckProperties::read(r)?;
                if r.is_empty() {
                    // The request had at least one filter, so there is at least one code.
                    return Err(DecodeError::Truncated {
                        packet: PacketType::$ptype,
                    });
                }
                let mut reason_codes = Vec::with_capacity(r.remaining());
                while !r.is_empty() {
                    reason_codes.push(read_reason(r)?);
                }
                Ok($name {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }

            pub(crate) fn validate(&self) -> Result<(), EncodeError> {
                if self.reason_codes.is_empty() {
                    return Err(EncodeError::NoFilters(PacketType::$ptype));
                }
                for &rc in &self.reason_codes {
                    check_reason(PacketType::$ptype, rc)?;
                }
                self.properties.check()
            }

            pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
                2 + block_len(self.properties.encoded_len()) + self.reason_codes.len()
            }

            pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
                buf.put_u16(self.packet_id.get());
                self.properties.write(buf);
                for &rc in &self.reason_codes {
                    buf.put_u8(rc as u8);
                }
            }
        }
    };
}

reason_list_ack! {
    /// SUBACK: one reason code per filter of the SUBSCRIBE.
    SubAck, SubAck
}

reason_list_ack! {
    /// UNSUBACK: one reason code per filter of the UNSUBSCRIBE.
    UnsubAck, UnsubAck
}
