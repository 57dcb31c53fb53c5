//! Small protocol value types: QoS, packet ids, reason codes, subscription options, …

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::string::{MqttString, StringError};

/// The protocol version spoken on a connection.
///
/// Decoding and encoding take it as a parameter, so MQTT 3.1.1 (protocol level 4) can be added as a
/// variant without changing any signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// MQTT 5.0 (protocol level 5).
    #[default]
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service of an application message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once (0).
    #[default]
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses a QoS from its two-bit value; 3 is not a QoS [MQTT-3.3.1-4].
    pub const fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A non-zero packet identifier [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// Creates a packet id; `None` for 0.
    pub const fn new(v: u16) -> Option<PacketId> {
        match NonZeroU16::new(v) {
            Some(n) => Some(PacketId(n)),
            None => None,
        }
    }

    /// The numeric value (1..=65535).
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A subscription identifier: 1 to 268,435,455.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// The largest subscription identifier (the largest variable byte integer).
    pub const MAX: u32 = 268_435_455;

    /// Creates a subscription identifier; `None` for 0 or values above [`Self::MAX`].
    pub const fn new(v: u32) -> Option<SubscriptionId> {
        if v > Self::MAX {
            return None;
        }
        match NonZeroU32::new(v) {
            Some(n) => Some(SubscriptionId(n)),
            None => None,
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

/// Retain Handling subscription option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription does not already exist.
    SendIfNew = 1,
    /// 2: do not send retained messages at the time of the subscribe.
    DoNotSend = 2,
}

impl RetainHandling {
    /// Parses the two-bit value; 3 is a protocol error.
    pub const fn from_u8(v: u8) -> Option<RetainHandling> {
        match v {
            0 => Some(RetainHandling::SendAtSubscribe),
            1 => Some(RetainHandling::SendIfNew),
            2 => Some(RetainHandling::DoNotSend),
            _ => None,
        }
    }
}

/// The options byte of one SUBSCRIBE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// Do not deliver messages published by this same client [MQTT-3.8.3-3].
    pub no_local: bool,
    /// Keep the RETAIN flag as published [MQTT-3.3.1-12, MQTT-3.3.1-13].
    pub retain_as_published: bool,
    /// When to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given QoS and every other option at its default.
    pub const fn with_qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    /// The encoded options byte.
    pub const fn to_byte(self) -> u8 {
        (self.qos as u8)
            | ((self.no_local as u8) << 2)
            | ((self.retain_as_published as u8) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// The value of the Payload Format Indicator property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    #[default]
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// A User Property: a name/value pair of UTF-8 strings. Order and repetition are significant
/// [MQTT-3.3.2-18].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// Name.
    pub name: MqttString,
    /// Value.
    pub value: MqttString,
}

impl UserProperty {
    /// Builds a pair.
    pub fn new(name: MqttString, value: MqttString) -> Self {
        UserProperty { name, value }
    }
}

/// The identifier of the User Property (section 2.2.2.2), the first byte of each entry of
/// [`UserProperties`]'s wire form.
const USER_PROPERTY_ID: u8 = 0x26;

/// A packet's User Properties: name/value pairs in order, repetition allowed [MQTT-3.3.2-18].
///
/// The pairs are kept as they appear on the wire: each one is the User Property identifier
/// (0x26) followed by the name and the value as UTF-8 Encoded Strings. A decoder validates the
/// pairs in place and keeps the run of bytes they occupy (a slice of the packet, no copy and no
/// allocation), and an encoder writes that run in one append; a property set that is forwarded
/// (as a broker does) is never taken apart and put together again. Reading a pair parses its two
/// length prefixes.
///
/// ```
/// use mqttproto_core::{MqttString, UserProperties, UserProperty};
///
/// let mut users = UserProperties::new();
/// users.push(UserProperty::new(
///     MqttString::try_from("region").unwrap(),
///     MqttString::try_from("eu-west").unwrap(),
/// ));
/// users.push(UserProperty::new(
///     MqttString::try_from("region").unwrap(),
///     MqttString::try_from("eu-north").unwrap(),
/// ));
/// assert_eq!(users.len(), 2);
/// assert_eq!(users.get("region"), Some("eu-west"));
/// let pairs: Vec<(&str, &str)> = users.iter().collect();
/// assert_eq!(pairs, [("region", "eu-west"), ("region", "eu-north")]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct UserProperties {
    /// The pairs in wire form. Every constructor keeps it well formed: a whole number of entries,
    /// each a valid pair of MQTT strings. Equal sequences of pairs have equal bytes.
    wire: Bytes,
}

impl UserProperties {
    /// No pair.
    pub const fn new() -> Self {
        UserProperties { wire: Bytes::new() }
    }

    /// Wraps wire-form pairs that the caller has validated.
    pub(crate) fn from_validated(wire: Bytes) -> Self {
        UserProperties { wire }
    }

    /// The pairs as they are encoded, identifiers included.
    pub(crate) fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    /// The number of pairs (counted by walking them).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The encoded size of the pairs, identifiers included.
    pub fn encoded_len(&self) -> usize {
        self.wire.len()
    }

    /// The pairs in order, as `(name, value)`.
    pub fn iter(&self) -> UserPropertiesIter<'_> {
        UserPropertiesIter { rest: &self.wire }
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Appends a pair.
    pub fn push(&mut self, property: UserProperty) {
        self.extend(std::iter::once(property));
    }

    /// Appends a pair given as string slices, checking both as MQTT strings (UTF-8 without
    /// U+0000, at most 65,535 bytes [MQTT-1.5.7-1]).
    pub fn try_push(&mut self, name: &str, value: &str) -> Result<(), StringError> {
        let name = MqttString::try_from(name)?;
        let value = MqttString::try_from(value)?;
        self.push(UserProperty::new(name, value));
        Ok(())
    }

    /// Keeps the pairs for which `keep(name, value)` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut kept = BytesMut::with_capacity(self.wire.len());
        let mut at = 0;
        while let Some((name, value)) = entry_at(&self.wire, at) {
            let entry = at..value.end;
            at = value.end;
            let s = |r: Range<usize>| std::str::from_utf8(&self.wire[r]).unwrap_or_default();
            if keep(s(name), s(value)) {
                kept.extend_from_slice(&self.wire[entry]);
            }
        }
        if kept.len() != self.wire.len() {
            self.wire = kept.freeze();
        }
    }

    /// Removes every pair.
    pub fn clear(&mut self) {
        self.wire = Bytes::new();
    }

    /// The pairs as owned values. Their strings share this set's buffer (no copy).
    pub fn to_vec(&self) -> Vec<UserProperty> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((name, value)) = entry_at(&self.wire, at) {
            at = value.end;
            out.push(UserProperty {
                name: MqttString::from_validated(self.wire.slice(name)),
                value: MqttString::from_validated(self.wire.slice(value)),
            });
        }
        out
    }
}

/// The name's and the value's byte ranges of the entry at `at`; the next entry starts where the
/// value ends.
fn entry_at(wire: &[u8], at: usize) -> Option<(Range<usize>, Range<usize>)> {
    let field = |at: usize| {
        let [h, l] = *wire.get(at..at + 2)? else {
            return None;
        };
        let start = at + 2;
        let end = start + usize::from(u16::from_be_bytes([h, l]));
        (end <= wire.len()).then_some(start..end)
    };
    if wire.get(at) != Some(&USER_PROPERTY_ID) {
        return None;
    }
    let name = field(at + 1)?;
    let value = field(name.end)?;
    Some((name, value))
}

/// The pairs of a [`UserProperties`], in order, as `(name, value)`.
#[derive(Debug, Clone)]
pub struct UserPropertiesIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for UserPropertiesIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = entry_at(self.rest, 0)?;
        let rest = self.rest;
        self.rest = &rest[value.end..];
        // Cannot fail: the wire form holds validated strings only (this crate forbids `unsafe`,
        // so the check runs again; it is linear and fast).
        let s = |r: Range<usize>| std::str::from_utf8(&rest[r]).unwrap_or_default();
        Some((s(name), s(value)))
    }
}

impl<'a> IntoIterator for &'a UserProperties {
    type Item = (&'a str, &'a str);
    type IntoIter = UserPropertiesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Extend<UserProperty> for UserProperties {
    fn extend<I: IntoIterator<Item = UserProperty>>(&mut self, iter: I) {
        /// Puts the pairs back even if the iterator panics: only whole pairs are ever written.
        struct Writer<'a> {
            set: &'a mut Bytes,
            wire: BytesMut,
        }
        impl Drop for Writer<'_> {
            fn drop(&mut self) {
                *self.set = std::mem::take(&mut self.wire).freeze();
            }
        }
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_none() {
            return;
        }
        // In place when this set's bytes are its own; copied once when they are shared (with
        // a clone, or with the packet they were decoded from).
        let wire = match std::mem::take(&mut self.wire).try_into_mut() {
            Ok(unique) => unique,
            Err(shared) => BytesMut::from(&shared[..]),
        };
        let mut w = Writer {
            set: &mut self.wire,
            wire,
        };
        for p in iter {
            // Both strings are at most 65,535 bytes (an `MqttString` invariant).
            w.wire.reserve(5 + p.name.len() + p.value.len());
            w.wire.put_u8(USER_PROPERTY_ID);
            w.wire.put_u16(p.name.len() as u16);
            w.wire.put_slice(p.name.as_bytes());
            w.wire.put_u16(p.value.len() as u16);
            w.wire.put_slice(p.value.as_bytes());
        }
    }
}

impl IntoIterator for UserProperties {
    type Item = UserProperty;
    type IntoIter = std::vec::IntoIter<UserProperty>;

    /// The pairs as owned values (see [`to_vec`](UserProperties::to_vec)).
    fn into_iter(self) -> Self::IntoIter {
        self.to_vec().into_iter()
    }
}

impl std::iter::FusedIterator for UserPropertiesIter<'_> {}

impl FromIterator<UserProperty> for UserProperties {
    fn from_iter<I: IntoIterator<Item = UserProperty>>(iter: I) -> Self {
        let mut users = UserProperties::new();
        users.extend(iter);
        users
    }
}

impl From<Vec<UserProperty>> for UserProperties {
    fn from(pairs: Vec<UserProperty>) -> Self {
        pairs.into_iter().collect()
    }
}

impl<const N: usize> From<[UserProperty; N]> for UserProperties {
    fn from(pairs: [UserProperty; N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for UserProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The kind of an MQTT control packet, the high nibble of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// CONNECT (1)
    Connect = 1,
    /// CONNACK (2)
    ConnAck = 2,
    /// PUBLISH (3)
    Publish = 3,
    /// PUBACK (4)
    PubAck = 4,
    /// PUBREC (5)
    PubRec = 5,
    /// PUBREL (6)
    PubRel = 6,
    /// PUBCOMP (7)
    PubComp = 7,
    /// SUBSCRIBE (8)
    Subscribe = 8,
    /// SUBACK (9)
    SubAck = 9,
    /// UNSUBSCRIBE (10)
    Unsubscribe = 10,
    /// UNSUBACK (11)
    UnsubAck = 11,
    /// PINGREQ (12)
    PingReq = 12,
    /// PINGRESP (13)
    PingResp = 13,
    /// DISCONNECT (14)
    Disconnect = 14,
    /// AUTH (15)
    Auth = 15,
}

impl PacketType {
    /// Parses the high nibble of the first byte; 0 is reserved.
    pub const fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this packet type requires (section 2.1.3), or `None` for PUBLISH,
    /// whose flags carry DUP, QoS and RETAIN.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// The packet's name as the specification writes it.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal, [$($pt:ident),*] ;)*) => {
        /// An MQTT 5 reason code (section 2.4).
        ///
        /// Codes that share a value have one variant; the other names are associated constants
        /// (for example [`ReasonCode::NORMAL_DISCONNECTION`] is [`ReasonCode::Success`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ReasonCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ReasonCode {
            /// Parses a reason code byte, whatever the packet.
            pub const fn from_u8(v: u8) -> Option<ReasonCode> {
                match v {
                    $( $value => Some(ReasonCode::$name), )*
                    _ => None,
                }
            }

            /// Whether the code may appear in a packet of this type (the table of section 2.4).
            pub const fn is_valid_for(self, packet: PacketType) -> bool {
                match self {
                    $( ReasonCode::$name => matches!(packet, $(PacketType::$pt)|*), )*
                }
            }

            /// The specification's name for the code.
            pub const fn description(self) -> &'static str {
                match self {
                    $( ReasonCode::$name => $text, )*
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00: Success, Normal disconnection, Granted QoS 0.
    Success = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, UnsubAck, Auth, Disconnect, SubAck];
    /// 0x01: Granted QoS 1.
    GrantedQoS1 = 0x01, "Granted QoS 1", [SubAck];
    /// 0x02: Granted QoS 2.
    GrantedQoS2 = 0x02, "Granted QoS 2", [SubAck];
    /// 0x04: Disconnect with Will Message.
    DisconnectWithWillMessage = 0x04, "Disconnect with Will Message", [Disconnect];
    /// 0x10: No matching subscribers.
    NoMatchingSubscribers = 0x10, "No matching subscribers", [PubAck, PubRec];
    /// 0x11: No subscription existed.
    NoSubscriptionExisted = 0x11, "No subscription existed", [UnsubAck];
    /// 0x18: Continue authentication.
    ContinueAuthentication = 0x18, "Continue authentication", [Auth];
    /// 0x19: Re-authenticate.
    ReAuthenticate = 0x19, "Re-authenticate", [Auth];
    /// 0x80: Unspecified error.
    UnspecifiedError = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x81: Malformed Packet.
    MalformedPacket = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    /// 0x82: Protocol Error.
    ProtocolError = 0x82, "Protocol Error", [ConnAck, Disconnect];
    /// 0x83: Implementation specific error.
    ImplementationSpecificError = 0x83, "Implementation specific error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x84: Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version", [ConnAck];
    /// 0x85: Client Identifier not valid.
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid", [ConnAck];
    /// 0x86: Bad User Name or Password.
    BadUserNameOrPassword = 0x86, "Bad User Name or Password", [ConnAck];
    /// 0x87: Not authorized.
    NotAuthorized = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x88: Server unavailable.
    ServerUnavailable = 0x88, "Server unavailable", [ConnAck];
    /// 0x89: Server busy.
    ServerBusy = 0x89, "Server busy", [ConnAck, Disconnect];
    /// 0x8A: Banned.
    Banned = 0x8A, "Banned", [ConnAck];
    /// 0x8B: Server shutting down.
    ServerShuttingDown = 0x8B, "Server shutting down", [Disconnect];
    /// 0x8C: Bad authentication method.
    BadAuthenticationMethod = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    /// 0x8D: Keep Alive timeout.
    KeepAliveTimeout = 0x8D, "Keep Alive timeout", [Disconnect];
    /// 0x8E: Session taken over.
    SessionTakenOver = 0x8E, "Session taken over", [Disconnect];
    /// 0x8F: Topic Filter invalid.
    TopicFilterInvalid = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    /// 0x90: Topic Name invalid.
    TopicNameInvalid = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x91: Packet Identifier in use.
    PacketIdentifierInUse = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    /// 0x92: Packet Identifier not found.
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    /// 0x93: Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded", [Disconnect];
    /// 0x94: Topic Alias invalid.
    TopicAliasInvalid = 0x94, "Topic Alias invalid", [Disconnect];
    /// 0x95: Packet too large.
    PacketTooLarge = 0x95, "Packet too large", [ConnAck, Disconnect];
    /// 0x96: Message rate too high.
    MessageRateTooHigh = 0x96, "Message rate too high", [Disconnect];
    /// 0x97: Quota exceeded.
    QuotaExceeded = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    /// 0x98: Administrative action.
    AdministrativeAction = 0x98, "Administrative action", [Disconnect];
    /// 0x99: Payload format invalid.
    PayloadFormatInvalid = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x9A: Retain not supported.
    RetainNotSupported = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    /// 0x9B: QoS not supported.
    QoSNotSupported = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    /// 0x9C: Use another server.
    UseAnotherServer = 0x9C, "Use another server", [ConnAck, Disconnect];
    /// 0x9D: Server moved.
    ServerMoved = 0x9D, "Server moved", [ConnAck, Disconnect];
    /// 0x9E: Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    /// 0x9F: Connection rate exceeded.
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    /// 0xA0: Maximum connect time.
    MaximumConnectTime = 0xA0, "Maximum connect time", [Disconnect];
    /// 0xA1: Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    /// 0xA2: Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// Whether the code reports a failure (0x80 and above).
    pub const fn is_error(self) -> bool {
        (self as u8) >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub const fn granted(qos: QoS) -> ReasonCode {
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X} {}", *self as u8, self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_code_value_round_trips() {
        let mut count = 0;
        for v in 0..=255u8 {
            if let Some(rc) = ReasonCode::from_u8(v) {
                assert_eq!(rc as u8, v);
                count += 1;
            }
        }
        // Section 2.4 lists 43 distinct values.
        assert_eq!(count, 43);
    }

    #[test]
    fn reason_code_table_spot_checks() {
        assert!(ReasonCode::Success.is_valid_for(PacketType::Disconnect));
        assert!(!ReasonCode::NoMatchingSubscribers.is_valid_for(PacketType::PubComp));
        assert!(ReasonCode::PacketIdentifierNotFound.is_valid_for(PacketType::PubRel));
        assert!(!ReasonCode::UnsupportedProtocolVersion.is_valid_for(PacketType::Disconnect));
        assert!(!ReasonCode::GrantedQoS1.is_valid_for(PacketType::PubAck));
        assert!(ReasonCode::ReAuthenticate.is_valid_for(PacketType::Auth));
        assert!(!ReasonCode::Success.is_valid_for(PacketType::Subscribe));
    }

    fn pair(name: &'static str, value: &'static str) -> UserProperty {
        UserProperty::new(
            MqttString::from_static(name).unwrap(),
            MqttString::from_static(value).unwrap(),
        )
    }

    #[test]
    fn user_properties_keep_order_and_repetition_mqtt_3_3_2_18() {
        let mut users = UserProperties::new();
        assert!(users.is_empty());
        assert_eq!(users.len(), 0);
        assert_eq!(users.iter().next(), None);
        users.push(pair("a", "1"));
        users.extend([pair("b", "2"), pair("a", "3")]);
        assert_eq!(users.len(), 3);
        assert_eq!(
            users.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("a", "3")]
        );
        assert_eq!(users.get("a"), Some("1"), "the first pair of that name");
        assert_eq!(users.get("c"), None);
        assert_eq!(
            users.to_vec(),
            [pair("a", "1"), pair("b", "2"), pair("a", "3")]
        );
        // Each pair: identifier, then two length-prefixed strings.
        assert_eq!(users.encoded_len(), 3 * (1 + 2 + 1 + 2 + 1));
        assert_eq!(
            format!("{users:?}"),
            r#"[("a", "1"), ("b", "2"), ("a", "3")]"#
        );
        users.clear();
        assert!(users.is_empty());
    }

    #[test]
    fn user_properties_are_equal_when_their_pairs_are() {
        let built = UserProperties::from(vec![pair("k", "v"), pair("k2", "")]);
        let mut pushed = UserProperties::new();
        pushed.push(pair("k", "v"));
        pushed.push(pair("k2", ""));
        assert_eq!(built, pushed);
        assert_ne!(
            built,
            UserProperties::from([pair("k2", ""), pair("k", "v")])
        );
        assert_ne!(built, UserProperties::from([pair("k", "v")]));
    }

    #[test]
    fn pushing_to_a_clone_leaves_the_original_alone() {
        let original = UserProperties::from([pair("a", "1")]);
        let mut copy = original.clone();
        copy.push(pair("b", "2"));
        assert_eq!(original.len(), 1);
        assert_eq!(copy.len(), 2);
        assert_eq!(copy.iter().last(), Some(("b", "2")));
    }

    #[test]
    fn user_properties_try_push_retain_and_owned_iteration() {
        let mut users = UserProperties::new();
        users.try_push("a", "1").unwrap();
        users.try_push("b", "2").unwrap();
        users.try_push("a", "3").unwrap();
        assert_eq!(
            users.try_push("bad\0", "x"),
            Err(StringError::NullCharacter)
        );
        assert_eq!(users.len(), 3, "a refused pair adds nothing");
        users.retain(|name, _| name == "a");
        assert_eq!(users.iter().collect::<Vec<_>>(), [("a", "1"), ("a", "3")]);
        users.retain(|_, value| value != "1");
        assert_eq!(
            users.clone().into_iter().collect::<Vec<_>>(),
            [pair("a", "3")]
        );
        users.retain(|_, _| false);
        assert!(users.is_empty());
    }

    #[test]
    fn extend_keeps_the_pairs_if_the_iterator_panics() {
        let mut users = UserProperties::from([pair("a", "1")]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            users.extend((0..3).map(|i| {
                assert!(i < 2, "the iterator fails");
                pair("b", "2")
            }))
        }));
        assert!(result.is_err());
        assert_eq!(
            users.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("b", "2")],
            "the pairs before the panic are kept, whole"
        );
    }

    #[test]
    fn subscription_id_bounds() {
        assert!(SubscriptionId::new(0).is_none());
        assert!(SubscriptionId::new(268_435_455).is_some());
        assert!(SubscriptionId::new(268_435_456).is_none());
    }
}
