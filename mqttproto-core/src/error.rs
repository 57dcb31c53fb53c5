//! Errors of the codec.
//!
//! Every decode error knows the reason code that the receiver answers with
//! ([`DecodeError::reason_code`]) and, where the specification has one, the normative statement it
//! enforces ([`DecodeError::statement`]).

use crate::string::StringError;
use crate::topic::TopicError;
use crate::types::{PacketId, PacketType, QoS, ReasonCode};

/// A received packet is malformed or breaks a rule of the specification.
///
/// Decoding stops at the first violation; the packet's bytes are consumed, but after most of these
/// errors the connection must be closed with DISCONNECT (or CONNACK) carrying
/// [`reason_code`](Self::reason_code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The fixed header declares a packet larger than the receiver's Maximum Packet Size.
    #[error(
        "packet of {size} bytes exceeds the maximum packet size of {max} bytes [MQTT-3.2.2-15]"
    )]
    PacketTooLarge {
        /// Declared size of the whole packet, fixed header included.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0 is reserved.
    #[error("packet type 0 is reserved")]
    InvalidPacketType,
    /// The fixed-header flags differ from the values the packet type requires.
    #[error("{packet} has fixed-header flags {flags:#06b}, which are reserved [MQTT-2.1.3-1]")]
    InvalidFixedHeaderFlags {
        /// Packet type.
        packet: PacketType,
        /// The received low nibble.
        flags: u8,
    },
    /// A Variable Byte Integer (for example the remaining length) is longer than 4 bytes.
    #[error("variable byte integer longer than 4 bytes")]
    VarintTooLong,
    /// A Variable Byte Integer is not in its minimal form.
    #[error("variable byte integer not encoded in the minimum number of bytes [MQTT-1.5.5-1]")]
    NonMinimalVarint,
    /// A field runs past the end of the packet.
    #[error("{packet} is truncated: a field runs past its remaining length")]
    Truncated {
        /// Packet type.
        packet: PacketType,
    },
    /// Bytes are left over after the last field.
    #[error("{packet} has unexpected bytes after its last field")]
    TrailingBytes {
        /// Packet type.
        packet: PacketType,
    },
    /// A UTF-8 Encoded String field is invalid.
    #[error("{field} in {packet}: {error}")]
    InvalidString {
        /// Packet type.
        packet: PacketType,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        error: StringError,
    },
    /// A PUBLISH or will topic name is invalid.
    #[error("invalid topic name in {packet}: {error} [MQTT-3.3.2-2]")]
    InvalidTopicName {
        /// Packet type.
        packet: PacketType,
        /// What is wrong.
        error: TopicError,
    },
    /// A PUBLISH has an empty topic name and no Topic Alias.
    #[error("PUBLISH with an empty topic name and no Topic Alias")]
    MissingTopicName,
    /// A topic filter in SUBSCRIBE or UNSUBSCRIBE is invalid.
    #[error("invalid topic filter in {packet}: {error}")]
    InvalidTopicFilter {
        /// Packet type.
        packet: PacketType,
        /// What is wrong.
        error: TopicError,
    },
    /// QoS 3 in a PUBLISH or a will [MQTT-3.3.1-4].
    #[error("QoS 3 is not a valid QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// A packet identifier of 0 where one is required [MQTT-2.2.1-3].
    #[error("{packet} has packet identifier 0 [MQTT-2.2.1-3]")]
    ZeroPacketId {
        /// Packet type.
        packet: PacketType,
    },
    /// A property identifier the specification does not define.
    #[error("unknown property identifier {id:#04x} in {context}")]
    UnknownProperty {
        /// Where.
        context: &'static str,
        /// The identifier.
        id: u32,
    },
    /// A property that is not valid in this packet (section 2.2.2.2: a Malformed Packet).
    #[error("property {name} is not allowed in {context}")]
    PropertyNotAllowed {
        /// Where.
        context: &'static str,
        /// The property's name.
        name: &'static str,
    },
    /// A property that may appear once appears twice.
    #[error("property {name} appears more than once in {context}")]
    DuplicateProperty {
        /// Where.
        context: &'static str,
        /// The property's name.
        name: &'static str,
    },
    /// A property value outside its allowed range (Receive Maximum 0, Maximum QoS 2, …).
    #[error("property {name} has the invalid value {value}")]
    InvalidPropertyValue {
        /// The property's name.
        name: &'static str,
        /// The received value.
        value: u32,
    },
    /// A Response Topic that is not a valid topic name [MQTT-3.3.2-14].
    #[error("invalid Response Topic: {0} [MQTT-3.3.2-14]")]
    InvalidResponseTopic(TopicError),
    /// A Topic Alias of 0 [MQTT-3.3.2-8].
    #[error("Topic Alias 0 is not permitted [MQTT-3.3.2-8]")]
    TopicAliasZero,
    /// SUBSCRIBE with no topic filter [MQTT-3.8.3-2].
    #[error("SUBSCRIBE contains no topic filter [MQTT-3.8.3-2]")]
    EmptySubscribe,
    /// UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE contains no topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
    /// Reserved bits of a subscription options byte are set [MQTT-3.8.3-5].
    #[error("reserved bits set in subscription options {0:#04x} [MQTT-3.8.3-5]")]
    ReservedSubscriptionOptions(u8),
    /// Maximum QoS 3 in subscription options (section 3.8.3.1: a Protocol Error).
    #[error("subscription options request QoS 3, a protocol error")]
    InvalidSubscriptionQoS,
    /// No Local set on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// Retain Handling 3 (section 3.8.3.1: a Protocol Error).
    #[error("Retain Handling 3 is a protocol error")]
    InvalidRetainHandling,
    /// Authentication Data without an Authentication Method (section 3.1.2.11.10: a Protocol
    /// Error).
    #[error("Authentication Data without an Authentication Method is a protocol error")]
    AuthenticationDataWithoutMethod,
    /// The reserved bit of the CONNECT flags is set [MQTT-3.1.2-3].
    #[error("reserved CONNECT flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set while the Will Flag is 0 [MQTT-3.1.2-11, MQTT-3.1.2-13].
    #[error("Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11, MQTT-3.1.2-13]")]
    WillFlagsWithoutWill,
    /// The protocol name is not "MQTT" [MQTT-3.1.2-1].
    #[error("unsupported protocol name [MQTT-3.1.2-1]")]
    UnsupportedProtocolName,
    /// The protocol level is not one this codec speaks [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion(u8),
    /// Payload Format Indicator 1 with a payload that is not valid UTF-8.
    ///
    /// For a PUBLISH, `packet_id` lets the receiver answer PUBACK/PUBREC 0x99 instead of
    /// disconnecting; in a CONNECT (the will), the answer is CONNACK 0x99.
    #[error("payload is not valid UTF-8 although its Payload Format Indicator is 1")]
    PayloadFormatInvalid {
        /// Packet type.
        packet: PacketType,
        /// The PUBLISH's packet identifier, for QoS 1 and 2.
        packet_id: Option<PacketId>,
    },
    /// A reason code that is not valid in this packet type.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// Packet type.
        packet: PacketType,
        /// The received byte.
        code: u8,
    },
    /// Reserved bits of the CONNACK acknowledge flags are set [MQTT-3.2.2-1].
    #[error("reserved CONNACK flags set [MQTT-3.2.2-1]")]
    ConnAckReservedFlags,
    /// CONNACK with Session Present and a failure reason code [MQTT-3.2.2-6].
    #[error("CONNACK with Session Present set and a non-zero reason code [MQTT-3.2.2-6]")]
    SessionPresentOnFailure,
}

impl DecodeError {
    /// The reason code the receiver sends in its DISCONNECT (or CONNACK) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidTopicName {
                error: TopicError::String(_),
                ..
            } => ReasonCode::MalformedPacket,
            InvalidTopicName { .. } => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter {
                error: TopicError::String(_),
                ..
            } => ReasonCode::MalformedPacket,
            InvalidTopicFilter { .. } => ReasonCode::TopicFilterInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            UnsupportedProtocolName | UnsupportedProtocolVersion(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            PayloadFormatInvalid { .. } => ReasonCode::PayloadFormatInvalid,
            MissingTopicName
            | ZeroPacketId { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | InvalidResponseTopic(_)
            | EmptySubscribe
            | EmptyUnsubscribe
            | InvalidRetainHandling
            | InvalidSubscriptionQoS
            | AuthenticationDataWithoutMethod
            | NoLocalOnSharedSubscription
            | SessionPresentOnFailure => ReasonCode::ProtocolError,
            InvalidPacketType
            | InvalidFixedHeaderFlags { .. }
            | VarintTooLong
            | NonMinimalVarint
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidString { .. }
            | InvalidQoS
            | DupOnQoS0
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. }
            | ReservedSubscriptionOptions(_)
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | InvalidReasonCode { .. }
            | ConnAckReservedFlags => ReasonCode::MalformedPacket,
        }
    }

    /// The normative statement this error enforces, where the specification numbers one.
    pub fn statement(&self) -> Option<&'static str> {
        use DecodeError::*;
        Some(match self {
            PacketTooLarge { .. } => "MQTT-3.2.2-15",
            InvalidFixedHeaderFlags { .. } => "MQTT-2.1.3-1",
            NonMinimalVarint => "MQTT-1.5.5-1",
            InvalidString { error, .. } => match error {
                StringError::NullCharacter => "MQTT-1.5.4-2",
                _ => "MQTT-1.5.4-1",
            },
            InvalidTopicName { error, .. } | InvalidTopicFilter { error, .. } => {
                return topic_statement(error)
            }
            InvalidQoS => "MQTT-3.3.1-4",
            DupOnQoS0 => "MQTT-3.3.1-2",
            ZeroPacketId { .. } => "MQTT-2.2.1-3",
            InvalidResponseTopic(_) => "MQTT-3.3.2-14",
            TopicAliasZero => "MQTT-3.3.2-8",
            EmptySubscribe => "MQTT-3.8.3-2",
            EmptyUnsubscribe => "MQTT-3.10.3-2",
            ReservedSubscriptionOptions(_) => "MQTT-3.8.3-5",
            NoLocalOnSharedSubscription => "MQTT-3.8.3-4",
            ConnectReservedFlag => "MQTT-3.1.2-3",
            WillFlagsWithoutWill => "MQTT-3.1.2-11",
            UnsupportedProtocolName => "MQTT-3.1.2-1",
            UnsupportedProtocolVersion(_) => "MQTT-3.1.2-2",
            ConnAckReservedFlags => "MQTT-3.2.2-1",
            SessionPresentOnFailure => "MQTT-3.2.2-6",
            _ => return None,
        })
    }
}

fn topic_statement(e: &TopicError) -> Option<&'static str> {
    Some(match e {
        TopicError::Empty => "MQTT-4.7.3-1",
        TopicError::String(StringError::NullCharacter) => "MQTT-4.7.3-2",
        TopicError::String(_) => "MQTT-1.5.4-1",
        TopicError::WildcardInName => "MQTT-3.3.2-2",
        TopicError::InvalidMultiLevelWildcard => "MQTT-4.7.1-1",
        TopicError::InvalidSingleLevelWildcard => "MQTT-4.7.1-2",
        TopicError::InvalidShareName => "MQTT-4.8.2-1",
        TopicError::MissingSharedFilter => "MQTT-4.8.2-2",
    })
}

/// A packet value cannot be encoded as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A Binary Data field (password, correlation data, will payload, …) exceeds 65,535 bytes.
    #[error("{field} of {len} bytes exceeds 65,535 bytes")]
    BinaryTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The packet's remaining length exceeds 268,435,455 bytes.
    #[error("packet body of {0} bytes exceeds the largest remaining length, 268,435,455")]
    PacketTooLarge(usize),
    /// A QoS 1 or 2 PUBLISH without a packet identifier, or a QoS 0 one with one [MQTT-2.2.1-2].
    #[error("PUBLISH packet identifier does not agree with its QoS [MQTT-2.2.1-2]")]
    PacketIdMismatch,
    /// A QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2].
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// A PUBLISH with an empty topic name and no Topic Alias.
    #[error("PUBLISH with an empty topic name needs a Topic Alias")]
    MissingTopicName,
    /// A reason code that is not valid in this packet type.
    #[error("reason code {code} is not valid in {packet}")]
    InvalidReasonCode {
        /// Packet type.
        packet: PacketType,
        /// The code.
        code: ReasonCode,
    },
    /// Authentication Data without an Authentication Method (section 3.1.2.11.10).
    #[error("Authentication Data needs an Authentication Method")]
    AuthenticationDataWithoutMethod,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local cannot be set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// SUBSCRIBE or UNSUBSCRIBE with no filter [MQTT-3.8.3-2, MQTT-3.10.3-2].
    #[error("{0} needs at least one topic filter [MQTT-3.8.3-2, MQTT-3.10.3-2]")]
    NoFilters(PacketType),
    /// CONNACK with Session Present and a failure reason code [MQTT-3.2.2-6].
    #[error("CONNACK with Session Present set needs reason code 0 [MQTT-3.2.2-6]")]
    SessionPresentOnFailure,
}

/// The peer broke a rule of the protocol that only a state machine can see (a packet out of
/// order, a Receive Maximum exceeded, an unknown Topic Alias, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A packet that is not allowed in the connection's current state (a second CONNECT
    /// [MQTT-3.1.0-2], a PUBLISH before CONNACK, a CONNECT sent to a client, …).
    #[error("unexpected {packet} while {state}")]
    UnexpectedPacket {
        /// What arrived.
        packet: PacketType,
        /// The state it arrived in.
        state: &'static str,
    },
    /// More unacknowledged QoS 1/2 PUBLISHes than our Receive Maximum allows (section 3.3.4).
    #[error("peer exceeded our Receive Maximum of {0}")]
    ReceiveMaximumExceeded(u16),
    /// A Topic Alias above the maximum we announced [MQTT-3.3.2-10, MQTT-3.3.2-12].
    #[error("Topic Alias {alias} exceeds the Topic Alias Maximum {max}")]
    TopicAliasOutOfRange {
        /// The alias received.
        alias: u16,
        /// Our maximum.
        max: u16,
    },
    /// A PUBLISH with an empty topic and a Topic Alias that has no mapping yet.
    #[error("Topic Alias {0} has no mapping on this connection")]
    UnknownTopicAlias(u16),
    /// A client sent a PUBLISH with a Subscription Identifier [MQTT-3.3.4-6].
    #[error("a PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]")]
    SubscriptionIdFromClient,
    /// The server said a session is present although the client asked for a clean start
    /// [MQTT-3.2.2-2, MQTT-3.2.2-4].
    #[error("CONNACK has Session Present although the client sent Clean Start [MQTT-3.2.2-4]")]
    UnexpectedSessionPresent,
    /// An AUTH whose Authentication Method differs from the one of CONNECT, or AUTH without
    /// enhanced authentication (section 4.12).
    #[error("AUTH does not match the connection's Authentication Method")]
    BadAuthentication,
    /// A non-zero Session Expiry Interval on DISCONNECT after CONNECT set 0 (section 3.14.2.2.2),
    /// or a server sending Session Expiry Interval on DISCONNECT [MQTT-3.14.2-2].
    #[error("invalid Session Expiry Interval on DISCONNECT")]
    InvalidSessionExpiryOnDisconnect,
    /// A SUBACK or UNSUBACK whose reason codes do not match its request one to one.
    #[error("SUBACK/UNSUBACK reason codes do not match the request's {expected} filters")]
    AckCountMismatch {
        /// Filters in the request.
        expected: usize,
    },
    /// A PUBLISH at a QoS above the Maximum QoS the server announced (section 3.2.2.3.4).
    #[error("PUBLISH at QoS {0} exceeds the Maximum QoS the server announced")]
    QoSNotSupported(u8),
    /// A PUBLISH with RETAIN set although the server does not support retained messages.
    #[error("retained PUBLISH although Retain Available is 0")]
    RetainNotSupported,
}

impl ProtocolError {
    /// The reason code of the DISCONNECT (or CONNACK) that reports this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            ProtocolError::ReceiveMaximumExceeded(_) => ReasonCode::ReceiveMaximumExceeded,
            ProtocolError::TopicAliasOutOfRange { .. } | ProtocolError::UnknownTopicAlias(_) => {
                ReasonCode::TopicAliasInvalid
            }
            ProtocolError::BadAuthentication => ReasonCode::BadAuthenticationMethod,
            ProtocolError::QoSNotSupported(_) => ReasonCode::QoSNotSupported,
            ProtocolError::RetainNotSupported => ReasonCode::RetainNotSupported,
            _ => ReasonCode::ProtocolError,
        }
    }
}

/// Why a connection's state machine stopped. Once set, it is returned by every later input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent a malformed or invalid packet.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// The peer broke a protocol rule.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// No packet within the keep-alive allowance (client: no PINGRESP in time; server:
    /// 1.5 × Keep Alive without input [MQTT-3.1.2-22]).
    #[error("keep alive timeout")]
    KeepAliveTimeout,
    /// No CONNACK (client) or CONNECT (server) in time.
    #[error("connect timeout")]
    ConnectTimeout,
    /// The peer sent DISCONNECT, or refused the connection in CONNACK.
    #[error("closed by peer with reason code {0}")]
    ClosedByPeer(ReasonCode),
    /// The transport closed (`handle_close`).
    #[error("connection closed")]
    ConnectionClosed,
    /// We sent DISCONNECT (`disconnect`, or a session takeover on the server).
    #[error("disconnected locally with reason code {0}")]
    Disconnected(ReasonCode),
}

impl Error {
    /// For a malformed packet or a protocol violation by the peer, the reason code to report it
    /// with (in DISCONNECT, or CONNACK before the connection is accepted); `None` otherwise.
    pub fn peer_violation_reason(&self) -> Option<ReasonCode> {
        match self {
            Error::Decode(e) => Some(e.reason_code()),
            Error::Protocol(e) => Some(e.reason_code()),
            _ => None,
        }
    }

    /// The reason code we sent (or would send) in DISCONNECT for this error, if we send one.
    pub fn reason_code(&self) -> Option<ReasonCode> {
        match self {
            Error::Decode(e) => Some(e.reason_code()),
            Error::Protocol(e) => Some(e.reason_code()),
            Error::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Error::Disconnected(rc) => Some(*rc),
            Error::ConnectTimeout | Error::ClosedByPeer(_) | Error::ConnectionClosed => None,
        }
    }
}

/// The application asked for something the connection cannot do now. Not fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The command needs a connection (or a connect in progress).
    #[error("not connected")]
    NotConnected,
    /// `connect` while connecting or connected.
    #[error("already connected or connecting")]
    AlreadyConnected,
    /// The machine stopped with a fatal error.
    #[error("connection failed: {0}")]
    Failed(Error),
    /// A publish above the server's Maximum QoS [MQTT-3.2.2-11].
    #[error("QoS {requested:?} exceeds the server's Maximum QoS {maximum:?} [MQTT-3.2.2-11]")]
    QoSNotSupported {
        /// Requested.
        requested: QoS,
        /// Allowed.
        maximum: QoS,
    },
    /// A retained publish while the server does not support retained messages [MQTT-3.2.2-14].
    #[error("the server does not support retained messages [MQTT-3.2.2-14]")]
    RetainNotSupported,
    /// The packet exceeds the peer's Maximum Packet Size even without optional properties
    /// [MQTT-3.2.2-15, MQTT-3.1.2-24].
    #[error("packet of {size} bytes exceeds the peer's Maximum Packet Size of {max}")]
    PacketTooLarge {
        /// Encoded size.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// All 65,535 packet identifiers are in use.
    #[error("no free packet identifier")]
    NoPacketIdAvailable,
    /// Acknowledging a packet id that awaits no acknowledgement.
    #[error("packet identifier {0} awaits no acknowledgement")]
    UnknownPacketId(PacketId),
    /// A feature the server announced it does not support (wildcard subscriptions, subscription
    /// identifiers, shared subscriptions).
    #[error("the server does not support {0}")]
    NotSupportedByServer(&'static str),
    /// The packet cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The session's message queue is full (see `SessionOptions::max_queued_messages`).
    #[error("message queue full")]
    QueueFull,
    /// Enhanced authentication is not in use, or no challenge awaits an answer.
    #[error("no authentication exchange in progress")]
    NoAuthInProgress,
    /// A non-zero Session Expiry Interval on DISCONNECT after CONNECT set 0 (section 3.14.2.2.2).
    #[error("cannot set a non-zero Session Expiry Interval on DISCONNECT after connecting with 0")]
    InvalidSessionExpiry,
}
