//! Properties (section 2.2.2): one typed struct per packet kind, each field a typed `Option`.
//!
//! A property that is not allowed in a packet is a Malformed Packet (section 2.2.2.2); one that
//! appears twice where it may appear once is a Protocol Error. Only User Property and Subscription
//! Identifier may repeat.

use bytes::{BufMut, Bytes, BytesMut};
use std::num::{NonZeroU16, NonZeroU32};

use super::wire::{put_varint, varint_len, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::string::MqttString;
use crate::topic::TopicName;
use crate::types::{PayloadFormat, QoS, SubscriptionId, UserProperties};

/// Property identifiers (section 2.2.2.2).
#[allow(missing_docs)]
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u32 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u32 = 0x02;
    pub const CONTENT_TYPE: u32 = 0x03;
    pub const RESPONSE_TOPIC: u32 = 0x08;
    pub const CORRELATION_DATA: u32 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u32 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u32 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u32 = 0x12;
    pub const SERVER_KEEP_ALIVE: u32 = 0x13;
    pub const AUTHENTICATION_METHOD: u32 = 0x15;
    pub const AUTHENTICATION_DATA: u32 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u32 = 0x17;
    pub const WILL_DELAY_INTERVAL: u32 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u32 = 0x19;
    pub const RESPONSE_INFORMATION: u32 = 0x1A;
    pub const SERVER_REFERENCE: u32 = 0x1C;
    pub const REASON_STRING: u32 = 0x1F;
    pub const RECEIVE_MAXIMUM: u32 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
    pub const TOPIC_ALIAS: u32 = 0x23;
    pub const MAXIMUM_QOS: u32 = 0x24;
    pub const RETAIN_AVAILABLE: u32 = 0x25;
    pub const USER_PROPERTY: u32 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u32 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u32 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u32 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u32 = 0x2A;
}

/// The specification's name of a property, or `None` for an undefined identifier.
pub(crate) fn property_name(pid: u32) -> Option<&'static str> {
    use id::*;
    Some(match pid {
        PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
        MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
        CONTENT_TYPE => "Content Type",
        RESPONSE_TOPIC => "Response Topic",
        CORRELATION_DATA => "Correlation Data",
        SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
        SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
        ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
        SERVER_KEEP_ALIVE => "Server Keep Alive",
        AUTHENTICATION_METHOD => "Authentication Method",
        AUTHENTICATION_DATA => "Authentication Data",
        REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
        WILL_DELAY_INTERVAL => "Will Delay Interval",
        REQUEST_RESPONSE_INFORMATION => "Request Response Information",
        RESPONSE_INFORMATION => "Response Information",
        SERVER_REFERENCE => "Server Reference",
        REASON_STRING => "Reason String",
        RECEIVE_MAXIMUM => "Receive Maximum",
        TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
        TOPIC_ALIAS => "Topic Alias",
        MAXIMUM_QOS => "Maximum QoS",
        RETAIN_AVAILABLE => "Retain Available",
        USER_PROPERTY => "User Property",
        MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
        SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
        _ => return None,
    })
}

fn name_of(pid: u32) -> &'static str {
    property_name(pid).unwrap_or("unknown property")
}

fn invalid(pid: u32, value: u32) -> DecodeError {
    DecodeError::InvalidPropertyValue {
        name: name_of(pid),
        value,
    }
}

/// A property value type: how it is read, sized and written (without its identifier).
pub(crate) trait PropValue: Sized {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError>;
    fn value_len(&self) -> usize;
    /// Writes the property: its identifier `id`, then the value.
    fn write(&self, id: u8, buf: &mut BytesMut);
    fn check(&self, _pid: u32) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// A byte that must be 0 or 1.
impl PropValue for bool {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(invalid(pid, v.into())),
        }
    }
    #[inline]
    fn value_len(&self) -> usize {
        1
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        buf.put_slice(&[id, *self as u8])
    }
}

impl PropValue for u16 {
    fn read(r: &mut Reader, _: u32) -> Result<Self, DecodeError> {
        r.u16()
    }
    #[inline]
    fn value_len(&self) -> usize {
        2
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        let [a, b] = self.to_be_bytes();
        buf.put_slice(&[id, a, b])
    }
}

impl PropValue for u32 {
    fn read(r: &mut Reader, _: u32) -> Result<Self, DecodeError> {
        r.u32()
    }
    #[inline]
    fn value_len(&self) -> usize {
        4
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        let [a, b, c, d] = self.to_be_bytes();
        buf.put_slice(&[id, a, b, c, d])
    }
}

/// Receive Maximum (0 is a Protocol Error) and Topic Alias (0 is not permitted [MQTT-3.3.2-8]).
impl PropValue for NonZeroU16 {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        NonZeroU16::new(r.u16()?).ok_or_else(|| {
            if pid == id::TOPIC_ALIAS {
                DecodeError::TopicAliasZero
            } else {
                invalid(pid, 0)
            }
        })
    }
    #[inline]
    fn value_len(&self) -> usize {
        2
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        self.get().write(id, buf)
    }
}

/// Maximum Packet Size: 0 is a Protocol Error.
impl PropValue for NonZeroU32 {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        NonZeroU32::new(r.u32()?).ok_or_else(|| invalid(pid, 0))
    }
    #[inline]
    fn value_len(&self) -> usize {
        4
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        self.get().write(id, buf)
    }
}

/// Maximum QoS, the one QoS-valued property: 0 or 1 (section 3.2.2.3.4).
impl PropValue for QoS {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            v => Err(invalid(pid, v.into())),
        }
    }
    #[inline]
    fn value_len(&self) -> usize {
        1
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        buf.put_slice(&[id, *self as u8])
    }
}

impl PropValue for PayloadFormat {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(PayloadFormat::Unspecified),
            1 => Ok(PayloadFormat::Utf8),
            v => Err(invalid(pid, v.into())),
        }
    }
    #[inline]
    fn value_len(&self) -> usize {
        1
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        buf.put_slice(&[id, *self as u8])
    }
}

impl PropValue for MqttString {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        r.string(name_of(pid))
    }
    #[inline]
    fn value_len(&self) -> usize {
        2 + MqttString::len(self)
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        put_prefixed_property(buf, id, self.as_bytes())
    }
}

/// Binary Data.
impl PropValue for Bytes {
    fn read(r: &mut Reader, _: u32) -> Result<Self, DecodeError> {
        r.binary()
    }
    #[inline]
    fn value_len(&self) -> usize {
        2 + Bytes::len(self)
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        put_prefixed_property(buf, id, self)
    }
    fn check(&self, pid: u32) -> Result<(), EncodeError> {
        check_binary(name_of(pid), self)
    }
}

/// Response Topic: a topic name without wildcards [MQTT-3.3.2-13, MQTT-3.3.2-14].
impl PropValue for TopicName {
    fn read(r: &mut Reader, _: u32) -> Result<Self, DecodeError> {
        r.topic_name(DecodeError::InvalidResponseTopic)
    }
    #[inline]
    fn value_len(&self) -> usize {
        2 + TopicName::len(self)
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        put_prefixed_property(buf, id, self.as_bytes())
    }
}

impl PropValue for SubscriptionId {
    fn read(r: &mut Reader, pid: u32) -> Result<Self, DecodeError> {
        let v = r.varint()?;
        SubscriptionId::new(v).ok_or_else(|| invalid(pid, v))
    }
    #[inline]
    fn value_len(&self) -> usize {
        varint_len(self.get())
    }
    #[inline]
    fn write(&self, id: u8, buf: &mut BytesMut) {
        buf.put_u8(id);
        put_varint(buf, self.get())
    }
}

/// Appends a property identifier and a length-prefixed field in one go (the length was checked).
#[inline(always)]
fn put_prefixed_property(buf: &mut BytesMut, id: u8, data: &[u8]) {
    debug_assert!(data.len() <= u16::MAX as usize);
    let [a, b] = (data.len() as u16).to_be_bytes();
    buf.put_slice(&[id, a, b]);
    buf.put_slice(data);
}

pub(crate) fn check_binary(field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    if b.len() > u16::MAX as usize {
        Err(EncodeError::BinaryTooLong {
            field,
            len: b.len(),
        })
    } else {
        Ok(())
    }
}

/// The Property Length prefix plus the properties.
pub(crate) fn block_len(props_len: usize) -> usize {
    varint_len(props_len as u32) + props_len
}

mod sealed {
    pub trait Sealed {}
}

/// A packet's set of properties (one of the `…Properties` structs of this module).
pub trait PropertySet: sealed::Sealed + Default + 'static {
    /// A shared value with no property set.
    fn empty() -> &'static Self;
    /// Whether no property is set.
    fn is_empty(&self) -> bool;
}

/// A set of properties kept on the heap, and only once a property is set.
///
/// Most messages carry no properties, so [`Publish`](super::Publish) keeps its
/// [`PublishProperties`] in this box: a message without properties is a small value, it is decoded
/// and dropped without allocating, and it moves cheaply.
///
/// The box reads and writes like the properties themselves:
///
/// * reading a field (`publish.properties.topic_alias`) goes through [`Deref`](std::ops::Deref);
///   an unset box reads as the empty set;
/// * writing a field (`publish.properties.topic_alias = None`) goes through
///   [`DerefMut`](std::ops::DerefMut), which allocates the set if the box was unset; use
///   [`get_mut`](Self::get_mut) to change properties only if some are set;
/// * a whole set is assigned with `publish.properties = props.into()`.
///
/// Two boxes are equal when their properties are: an unset box equals a box that holds the empty
/// set.
#[derive(Clone, Default)]
pub struct PropertiesBox<T>(Option<Box<T>>);

impl<T: PropertySet> PropertiesBox<T> {
    /// An unset box: no property, no allocation.
    pub const fn none() -> Self {
        PropertiesBox(None)
    }

    /// Boxes `props`, or allocates nothing if no property is set.
    pub fn new(props: T) -> Self {
        if props.is_empty() {
            PropertiesBox(None)
        } else {
            PropertiesBox(Some(Box::new(props)))
        }
    }

    /// Wraps a boxed set as it is (an empty one is kept).
    #[inline]
    pub(crate) fn from_box(props: Box<T>) -> Self {
        PropertiesBox(Some(props))
    }

    /// Whether no property is set. This does not allocate, and is fast when the box is unset.
    #[inline]
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            None => true,
            Some(p) => p.is_empty(),
        }
    }

    /// The properties if the box is set (it may hold the empty set), without looking at the
    /// shared empty value.
    #[inline]
    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// The properties for changing, without allocating: `None` if the box is unset.
    #[inline]
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// The properties for changing, allocating an empty set if the box is unset (what
    /// [`DerefMut`](std::ops::DerefMut) does).
    pub fn make_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }

    /// Takes the properties out, leaving the box unset.
    pub fn take(&mut self) -> T {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// The properties by value.
    pub fn into_inner(self) -> T {
        self.0.map(|b| *b).unwrap_or_default()
    }
}

impl<T: PropertySet> std::ops::Deref for PropertiesBox<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            Some(p) => p,
            None => T::empty(),
        }
    }
}

impl<T: PropertySet> std::ops::DerefMut for PropertiesBox<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.make_mut()
    }
}

impl<T: PropertySet> From<T> for PropertiesBox<T> {
    fn from(props: T) -> Self {
        PropertiesBox::new(props)
    }
}

impl<T: PropertySet + PartialEq> PartialEq for PropertiesBox<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: PropertySet + Eq> Eq for PropertiesBox<T> {}

impl<T: PropertySet + std::fmt::Debug> std::fmt::Debug for PropertiesBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

macro_rules! property_set {
    (
        $(#[$meta:meta])*
        $name:ident, $context:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $pid:ident ),* $(,)?
        }
        $(#[$umeta:meta])* user_properties
        $( repeated {
            $( $(#[$rmeta:meta])* $rfield:ident : $rty:ty = $rpid:ident ),* $(,)?
        } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
            $(#[$umeta])*
            pub user_properties: UserProperties,
            $($( $(#[$rmeta])* pub $rfield: Vec<$rty>, )*)?
        }

        impl sealed::Sealed for $name {}

        impl PropertySet for $name {
            #[inline]
            fn empty() -> &'static Self {
                static EMPTY: $name = $name::EMPTY;
                &EMPTY
            }

            #[inline]
            fn is_empty(&self) -> bool {
                $name::is_empty(self)
            }
        }

        impl $name {
            /// The value with no property set, usable in `const` and `static` context.
            pub const EMPTY: $name = $name {
                $( $field: None, )*
                user_properties: UserProperties::new(),
                $($( $rfield: Vec::new(), )*)?
            };

            /// Whether no property is set.
            pub fn is_empty(&self) -> bool {
                true $( && self.$field.is_none() )*
                    && self.user_properties.is_empty()
                    $($( && self.$rfield.is_empty() )*)?
            }

            /// Reads the Property Length and the properties.
            #[allow(unused_mut, unused_variables, dead_code)]
            pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
                let mut props = Self::default();
                props.read_into(r)?;
                Ok(props)
            }

            /// [`read`](Self::read) into an empty set in place (for a boxed set: no move).
            #[allow(unused_mut, unused_variables)]
            pub(crate) fn read_into(&mut self, r: &mut Reader) -> Result<(), DecodeError> {
                let props = self;
                let len = r.varint()? as usize;
                if len == 0 {
                    return Ok(());
                }
                let outer = r.limit(len)?;
                let mut seen: u64 = 0;
                let mut users = UsersRun::default();
                while !r.is_empty() {
                    let pid = r.property_id()?;
                    let r = &mut *r;
                    match pid {
                        $( id::$pid => {
                            let bit = 1u64 << pid;
                            if seen & bit != 0 {
                                return Err(DecodeError::DuplicateProperty {
                                    context: $context,
                                    name: name_of(pid),
                                });
                            }
                            seen |= bit;
                            props.$field = Some(read_value::<$ty>(r, pid)?);
                        } )*
                        id::USER_PROPERTY => users.read(r)?,
                        $($( id::$rpid => props.$rfield.push(<$rty as PropValue>::read(r, pid)?), )*)?
                        other => {
                            return Err(match property_name(other) {
                                Some(name) => DecodeError::PropertyNotAllowed {
                                    context: $context,
                                    name,
                                },
                                None => DecodeError::UnknownProperty {
                                    context: $context,
                                    id: other,
                                },
                            })
                        }
                    }
                }
                props.user_properties = users.finish(r);
                r.end_limit(outer);
                Ok(())
            }

            /// The size of the properties, without the Property Length prefix.
            #[inline]
            pub fn encoded_len(&self) -> usize {
                let mut n = 0;
                $( if let Some(v) = &self.$field { n += 1 + v.value_len(); } )*
                n += self.user_properties.encoded_len();
                $($( for v in &self.$rfield { n += 1 + v.value_len(); } )*)?
                n
            }

            #[inline]
            pub(crate) fn check(&self) -> Result<(), EncodeError> {
                $( if let Some(v) = &self.$field { v.check(id::$pid)?; } )*
                $($( for v in &self.$rfield { v.check(id::$rpid)?; } )*)?
                Ok(())
            }

            /// Writes the Property Length and the properties.
            pub(crate) fn write(&self, buf: &mut BytesMut) {
                self.write_sized(buf, self.encoded_len());
            }

            /// [`write`](Self::write) with the size [`encoded_len`](Self::encoded_len) returned.
            #[inline]
            pub(crate) fn write_sized(&self, buf: &mut BytesMut, len: usize) {
                debug_assert_eq!(len, self.encoded_len());
                put_varint(buf, len as u32);
                self.write_body(buf);
            }

            /// The properties without the Property Length.
            #[inline]
            pub(crate) fn write_body(&self, buf: &mut BytesMut) {
                $( if let Some(v) = &self.$field { v.write(id::$pid as u8, buf); } )*
                buf.put_slice(self.user_properties.wire());
                $($( for v in &self.$rfield { v.write(id::$rpid as u8, buf); } )*)?
            }
        }
    };
}

/// Gathers the User Properties of one property block while it is read: the pairs are validated
/// in place, and the run of bytes they occupy becomes the [`UserProperties`] (a slice of the
/// packet). Pairs separated by other properties are copied together instead.
#[derive(Default)]
struct UsersRun {
    start: usize,
    end: usize,
    /// The pairs so far, once one did not directly follow the previous ones.
    copied: Option<BytesMut>,
}

impl UsersRun {
    /// Reads one pair; the reader has just read its identifier.
    #[inline]
    fn read(&mut self, r: &mut Reader) -> Result<(), DecodeError> {
        // The identifier is one byte: 0x26 in more bytes would not be in minimum form.
        let start = r.pos() - 1;
        r.skip_string("User Property name")?;
        r.skip_string("User Property value")?;
        let end = r.pos();
        if let Some(copied) = &mut self.copied {
            copied.extend_from_slice(r.bytes(start..end));
        } else if self.start == self.end {
            (self.start, self.end) = (start, end);
        } else if self.end == start {
            self.end = end;
        } else {
            let mut copied = BytesMut::with_capacity(self.end - self.start + end - start);
            copied.extend_from_slice(r.bytes(self.start..self.end));
            copied.extend_from_slice(r.bytes(start..end));
            self.copied = Some(copied);
        }
        Ok(())
    }

    #[inline]
    fn finish(self, r: &Reader) -> UserProperties {
        match self.copied {
            Some(copied) => UserProperties::from_validated(copied.freeze()),
            None if self.start == self.end => UserProperties::new(),
            None => UserProperties::from_validated(r.slice(self.start..self.end)),
        }
    }
}

#[inline]
fn read_value<T: PropValue>(r: &mut Reader, pid: u32) -> Result<T, DecodeError> {
    T::read(r, pid)
}

property_set! {
    /// Properties of CONNECT (section 3.1.2.11).
    ConnectProperties, "CONNECT" {
        /// Session Expiry Interval in seconds; absent means 0.
        session_expiry_interval: u32 = SESSION_EXPIRY_INTERVAL,
        /// Receive Maximum: how many QoS 1/2 publishes the client processes at once.
        receive_maximum: NonZeroU16 = RECEIVE_MAXIMUM,
        /// Maximum Packet Size the client accepts.
        maximum_packet_size: NonZeroU32 = MAXIMUM_PACKET_SIZE,
        /// Topic Alias Maximum the client accepts.
        topic_alias_maximum: u16 = TOPIC_ALIAS_MAXIMUM,
        /// Request Response Information.
        request_response_information: bool = REQUEST_RESPONSE_INFORMATION,
        /// Request Problem Information.
        request_problem_information: bool = REQUEST_PROBLEM_INFORMATION,
        /// Authentication Method (enhanced authentication).
        authentication_method: MqttString = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Bytes = AUTHENTICATION_DATA,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Will Properties in the CONNECT payload (section 3.1.3.2).
    WillProperties, "Will Properties" {
        /// Will Delay Interval in seconds.
        will_delay_interval: u32 = WILL_DELAY_INTERVAL,
        /// Payload Format Indicator.
        payload_format_indicator: PayloadFormat = PAYLOAD_FORMAT_INDICATOR,
        /// Message Expiry Interval in seconds.
        message_expiry_interval: u32 = MESSAGE_EXPIRY_INTERVAL,
        /// Content Type.
        content_type: MqttString = CONTENT_TYPE,
        /// Response Topic.
        response_topic: TopicName = RESPONSE_TOPIC,
        /// Correlation Data.
        correlation_data: Bytes = CORRELATION_DATA,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of CONNACK (section 3.2.2.3).
    ConnAckProperties, "CONNACK" {
        /// Session Expiry Interval the server uses.
        session_expiry_interval: u32 = SESSION_EXPIRY_INTERVAL,
        /// Receive Maximum of the server.
        receive_maximum: NonZeroU16 = RECEIVE_MAXIMUM,
        /// Maximum QoS the server supports (0 or 1; absent means 2).
        maximum_qos: QoS = MAXIMUM_QOS,
        /// Whether the server supports retained messages (absent means yes).
        retain_available: bool = RETAIN_AVAILABLE,
        /// Maximum Packet Size the server accepts.
        maximum_packet_size: NonZeroU32 = MAXIMUM_PACKET_SIZE,
        /// Client identifier assigned by the server.
        assigned_client_identifier: MqttString = ASSIGNED_CLIENT_IDENTIFIER,
        /// Topic Alias Maximum the server accepts.
        topic_alias_maximum: u16 = TOPIC_ALIAS_MAXIMUM,
        /// Reason String.
        reason_string: MqttString = REASON_STRING,
        /// Wildcard Subscription Available (absent means yes).
        wildcard_subscription_available: bool = WILDCARD_SUBSCRIPTION_AVAILABLE,
        /// Subscription Identifiers Available (absent means yes).
        subscription_identifiers_available: bool = SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        /// Shared Subscription Available (absent means yes).
        shared_subscription_available: bool = SHARED_SUBSCRIPTION_AVAILABLE,
        /// Server Keep Alive, which replaces the client's [MQTT-3.2.2-21].
        server_keep_alive: u16 = SERVER_KEEP_ALIVE,
        /// Response Information.
        response_information: MqttString = RESPONSE_INFORMATION,
        /// Server Reference.
        server_reference: MqttString = SERVER_REFERENCE,
        /// Authentication Method.
        authentication_method: MqttString = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Bytes = AUTHENTICATION_DATA,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of PUBLISH (section 3.3.2.3).
    PublishProperties, "PUBLISH" {
        /// Payload Format Indicator.
        payload_format_indicator: PayloadFormat = PAYLOAD_FORMAT_INDICATOR,
        /// Message Expiry Interval in seconds.
        message_expiry_interval: u32 = MESSAGE_EXPIRY_INTERVAL,
        /// Topic Alias (never 0 [MQTT-3.3.2-8]).
        topic_alias: NonZeroU16 = TOPIC_ALIAS,
        /// Response Topic.
        response_topic: TopicName = RESPONSE_TOPIC,
        /// Correlation Data.
        correlation_data: Bytes = CORRELATION_DATA,
        /// Content Type.
        content_type: MqttString = CONTENT_TYPE,
    }
    /// User Properties, in order [MQTT-3.3.2-18].
    user_properties
    repeated {
        /// Subscription Identifiers of the matching subscriptions (server to client only).
        subscription_identifiers: SubscriptionId = SUBSCRIPTION_IDENTIFIER,
    }
}

property_set! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    AckProperties, "acknowledgement" {
        /// Reason String.
        reason_string: MqttString = REASON_STRING,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of SUBSCRIBE (section 3.8.2.1).
    SubscribeProperties, "SUBSCRIBE" {
        /// Subscription Identifier (1 to 268,435,455).
        subscription_identifier: SubscriptionId = SUBSCRIPTION_IDENTIFIER,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of UNSUBSCRIBE (section 3.10.2.1).
    UnsubscribeProperties, "UNSUBSCRIBE" {
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of DISCONNECT (section 3.14.2.2).
    DisconnectProperties, "DISCONNECT" {
        /// Session Expiry Interval (client to server only [MQTT-3.14.2-2]).
        session_expiry_interval: u32 = SESSION_EXPIRY_INTERVAL,
        /// Reason String.
        reason_string: MqttString = REASON_STRING,
        /// Server Reference.
        server_reference: MqttString = SERVER_REFERENCE,
    }
    /// User Properties, in order.
    user_properties
}

property_set! {
    /// Properties of AUTH (section 3.15.2.2).
    AuthProperties, "AUTH" {
        /// Authentication Method.
        authentication_method: MqttString = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Bytes = AUTHENTICATION_DATA,
        /// Reason String.
        reason_string: MqttString = REASON_STRING,
    }
    /// User Properties, in order.
    user_properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_box_reads_an_unset_box_as_the_empty_set() {
        let b = PropertiesBox::<PublishProperties>::default();
        assert!(b.get().is_none());
        assert!(b.is_empty());
        assert_eq!(*b, PublishProperties::default());
        assert_eq!(b.topic_alias, None);
        assert!(b.user_properties.is_empty());
        assert_eq!(
            format!("{b:?}"),
            format!("{:?}", PublishProperties::default())
        );
    }

    #[test]
    fn properties_box_allocates_only_when_written() {
        let mut b = PropertiesBox::<PublishProperties>::none();
        assert!(b.get_mut().is_none());
        assert!(b.get().is_none(), "get_mut does not allocate");
        b.message_expiry_interval = Some(5);
        assert_eq!(b.get().map(|p| p.message_expiry_interval), Some(Some(5)));
        assert!(!b.is_empty());
        b.get_mut().unwrap().message_expiry_interval = None;
        assert!(b.is_empty(), "a set box holding nothing is empty");
        assert!(PropertiesBox::new(PublishProperties::default())
            .get()
            .is_none());
    }

    #[test]
    fn properties_box_equality_is_by_content() {
        let unset = PropertiesBox::<PublishProperties>::none();
        let mut empty = PropertiesBox::<PublishProperties>::none();
        empty.make_mut();
        assert!(empty.get().is_some());
        assert_eq!(unset, empty);
        let set: PropertiesBox<PublishProperties> = PublishProperties {
            content_type: Some(MqttString::from_static("text/plain").unwrap()),
            ..PublishProperties::default()
        }
        .into();
        assert_ne!(unset, set);
        assert_eq!(set.clone(), set);
    }

    #[test]
    fn properties_box_take_and_into_inner() {
        let props = PublishProperties {
            topic_alias: NonZeroU16::new(3),
            ..PublishProperties::default()
        };
        let mut b = PropertiesBox::new(props.clone());
        assert_eq!(b.take(), props);
        assert!(b.get().is_none());
        assert_eq!(b.take(), PublishProperties::default());
        assert_eq!(PropertiesBox::new(props.clone()).into_inner(), props);
        assert_eq!(
            PropertiesBox::<PublishProperties>::none().into_inner(),
            PublishProperties::default()
        );
    }
}
