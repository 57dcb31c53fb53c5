//! DISCONNECT (section 3.14) and AUTH (section 3.15). PINGREQ and PINGRESP have no body.

use bytes::{BufMut, BytesMut};

use super::ack::{check_reason, read_reason};
use super::properties::{block_len, AuthProperties, DisconnectProperties};
use super::wire::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::types::{PacketType, ProtocolVersion, ReasonCode};

macro_rules! reason_and_properties {
    ($(#[$meta:meta])* $name:ident, $props:ident, $ptype:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// Reason code.
            pub reason_code: ReasonCode,
            /// Properties.
            pub properties: $props,
        }

        impl Default for $name {
            fn default() -> Self {
                $name::new(ReasonCode::Success)
            }
        }

        impl $name {
            /// A packet with this reason code and no properties.
            pub fn new(reason_code: ReasonCode) -> Self {
                $name {
                    reason_code,
                    properties: $props::default(),
                }
            }

            pub(crate) fn decode(
                r: &mut Reader,
                _version: ProtocolVersion,
            ) -> Result<Self, DecodeError> {
                // Remaining Length 0 means reason code 0x00 and no properties; a lone reason code
                // means no properties.
                if r.is_empty() {
                    return Ok(Self::default());
                }
                let reason_code = read_reason(r)?;
                let properties = if r.is_empty() {
                    $props::default()
                } else {
                    $props::read(r)?
                };
                Ok($name {
                    reason_code,
                    properties,
                })
            }

            pub(crate) fn validate(&self) -> Result<(), EncodeError> {
                check_reason(PacketType::$ptype, self.reason_code)?;
                self.properties.check()
            }

            pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
                if !self.properties.is_empty() {
                    1 + block_len(self.properties.encoded_len())
                } else if self.reason_code != ReasonCode::Success {
                    1
                } else {
                    0
                }
            }

            pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
                if !self.properties.is_empty() {
                    buf.put_u8(self.reason_code as u8);
                    self.properties.write(buf);
                } else if self.reason_code != ReasonCode::Success {
                    buf.put_u8(self.reason_code as u8);
                }
            }
        }
    };
}

reason_and_properties! {
    /// DISCONNECT: the last packet on a connection, from either side.
    Disconnect, DisconnectProperties, Disconnect
}

reason_and_properties! {
    /// AUTH: a step of enhanced authentication or re-authentication.
    Auth, AuthProperties, Auth
}
