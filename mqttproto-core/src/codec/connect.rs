//! CONNECT (section 3.1) and CONNACK (section 3.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::ack::{check_reason, read_reason};
use super::properties::{
    block_len, check_binary, ConnAckProperties, ConnectProperties, WillProperties,
};
use super::wire::{put_prefixed, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::string::MqttString;
use crate::topic::TopicName;
use crate::types::{PacketType, PayloadFormat, ProtocolVersion, QoS, ReasonCode};

const PROTOCOL_NAME: &[u8] = b"MQTT";

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// The protocol version the client speaks.
    pub protocol_version: ProtocolVersion,
    /// Clean Start: discard any existing session [MQTT-3.1.2-4].
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty, for the server to assign one [MQTT-3.1.3-6].
    pub client_id: MqttString,
    /// The Will Message.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// Properties.
    pub properties: ConnectProperties,
}

/// A Will Message, published by the server when the connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: TopicName,
    /// Will Payload (binary data, at most 65,535 bytes).
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties.
    pub properties: WillProperties,
}

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
        let name = r.binary()?;
        if name != PROTOCOL_NAME {
            return Err(DecodeError::UnsupportedProtocolName);
        }
        let protocol_version = match r.u8()? {
            5 => ProtocolVersion::V5,
            other => return Err(DecodeError::UnsupportedProtocolVersion(other)),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos_bits = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let keep_alive = r.u16()?;
        let properties = ConnectProperties::read(r)?;
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod); // section 3.1.2.11.10
        }
        let client_id = r.string("Client Identifier")?;
        let will = if will_flag {
            let qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS)?;
            let properties = WillProperties::read(r)?;
            let topic = TopicName::from_bytes(r.binary()?).map_err(|error| {
                DecodeError::InvalidTopicName {
                    packet: PacketType::Connect,
                    error,
                }
            })?;
            let payload = r.binary()?;
            if properties.payload_format_indicator == Some(PayloadFormat::Utf8)
                && std::str::from_utf8(&payload).is_err()
            {
                return Err(DecodeError::PayloadFormatInvalid {
                    packet: PacketType::Connect,
                    packet_id: None,
                });
            }
            Some(Will {
                topic,
                payload,
                qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string("User Name")?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol_version,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        self.properties.check()?;
        if self.properties.authentication_data.is_some()
            && self.properties.authentication_method.is_none()
        {
            return Err(EncodeError::AuthenticationDataWithoutMethod);
        }
        if let Some(will) = &self.will {
            will.properties.check()?;
            check_binary("Will Payload", &will.payload)?;
        }
        if let Some(p) = &self.password {
            check_binary("Password", p)?;
        }
        Ok(())
    }

    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        let mut n = 2 + PROTOCOL_NAME.len() + 1 + 1 + 2;
        n += block_len(self.properties.encoded_len());
        n += 2 + self.client_id.len();
        if let Some(will) = &self.will {
            n += block_len(will.properties.encoded_len());
            n += 2 + will.topic.len() + 2 + will.payload.len();
        }
        if let Some(u) = &self.username {
            n += 2 + u.len();
        }
        if let Some(p) = &self.password {
            n += 2 + p.len();
        }
        n
    }

    fn flags(&self) -> u8 {
        let mut f = 0u8;
        if self.clean_start {
            f |= 0x02;
        }
        if let Some(will) = &self.will {
            f |= 0x04 | ((will.qos as u8) << 3);
            if will.retain {
                f |= 0x20;
            }
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        f
    }

    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        put_prefixed(buf, PROTOCOL_NAME);
        buf.put_u8(self.protocol_version.level());
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        self.properties.write(buf);
        put_prefixed(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            will.properties.write(buf);
            put_prefixed(buf, will.topic.as_bytes());
            put_prefixed(buf, &will.payload);
        }
        if let Some(u) = &self.username {
            put_prefixed(buf, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_prefixed(buf, p);
        }
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Connect Reason Code.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn decode(
        r: &mut Reader,
        _version: ProtocolVersion,
    ) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let session_present = flags & 0x01 != 0;
        let reason_code = read_reason(r)?;
        if session_present && reason_code != ReasonCode::Success {
            return Err(DecodeError::SessionPresentOnFailure);
        }
        let properties = ConnAckProperties::read(r)?;
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok(ConnAck {
            session_present,
            reason_code,
            properties,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        check_reason(PacketType::ConnAck, self.reason_code)?;
        if self.session_present && self.reason_code != ReasonCode::Success {
            return Err(EncodeError::SessionPresentOnFailure);
        }
        if self.properties.authentication_data.is_some()
            && self.properties.authentication_method.is_none()
        {
            return Err(EncodeError::AuthenticationDataWithoutMethod);
        }
        self.properties.check()
    }

    pub(crate) fn remaining_len(&self, _version: ProtocolVersion) -> usize {
        2 + block_len(self.properties.encoded_len())
    }

    pub(crate) fn write(&self, buf: &mut BytesMut, _version: ProtocolVersion) {
        buf.put_u8(self.session_present as u8);
        buf.put_u8(self.reason_code as u8);
        self.properties.write(buf);
    }
}
