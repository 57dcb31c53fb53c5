//! Topic names, topic filters, shared-subscription filters and matching (section 4.7, 4.8).

use bytes::Bytes;
use std::fmt;

use crate::string::{MqttString, StringError};

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty [MQTT-4.7.3-1]")]
    Empty,
    /// Not a valid MQTT UTF-8 string [MQTT-4.7.3-2, MQTT-4.7.3-3].
    #[error(transparent)]
    String(#[from] StringError),
    /// A topic name contains `+` or `#` [MQTT-4.7.0-1, MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character [MQTT-4.7.0-1]")]
    WildcardInName,
    /// `#` is not alone in the last level [MQTT-4.7.1-1].
    #[error("'#' must be the last character and occupy a whole level [MQTT-4.7.1-1]")]
    InvalidMultiLevelWildcard,
    /// `+` does not occupy a whole level [MQTT-4.7.1-2].
    #[error("'+' must occupy a whole level [MQTT-4.7.1-2]")]
    InvalidSingleLevelWildcard,
    /// `$share/` is not followed by a valid ShareName [MQTT-4.8.2-1, MQTT-4.8.2-2].
    #[error("shared subscription needs a ShareName without '/', '+' or '#' [MQTT-4.8.2-1, MQTT-4.8.2-2]")]
    InvalidShareName,
    /// The ShareName is not followed by `/` and a topic filter [MQTT-4.8.2-2].
    #[error(
        "shared subscription ShareName must be followed by '/' and a topic filter [MQTT-4.8.2-2]"
    )]
    MissingSharedFilter,
}

/// The lowest byte of the fast topic check: 0x2C is above U+0000, `#` (0x23) and `+` (0x2B).
const TOPIC_FAST_MIN: u8 = 0x2C;

/// A validated topic name: no wildcards, at least one character.
///
/// A PUBLISH that relies on a topic alias carries an empty topic name; the codec represents that
/// with [`TopicName::empty`], the one empty value this type admits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validates a topic name [MQTT-4.7.3-1, MQTT-4.7.0-1].
    pub fn from_bytes(bytes: Bytes) -> Result<TopicName, TopicError> {
        if bytes.is_empty() {
            return Err(TopicError::Empty);
        }
        Self::from_bytes_allow_empty(bytes)
    }

    /// Validates, accepting the empty name that stands for "use the topic alias".
    pub(crate) fn from_bytes_allow_empty(bytes: Bytes) -> Result<TopicName, TopicError> {
        Self::check_allow_empty(&bytes)?;
        Ok(TopicName(MqttString::from_validated(bytes)))
    }

    /// The checks of [`from_bytes`](Self::from_bytes), on a slice.
    #[inline]
    pub(crate) fn check(bytes: &[u8]) -> Result<(), TopicError> {
        if bytes.is_empty() {
            return Err(TopicError::Empty);
        }
        Self::check_allow_empty(bytes)
    }

    /// The checks of [`from_bytes_allow_empty`](Self::from_bytes_allow_empty), on a slice.
    #[inline]
    pub(crate) fn check_allow_empty(bytes: &[u8]) -> Result<(), TopicError> {
        if bytes.len() <= crate::string::MAX_STRING_LEN
            && (crate::string::ascii_from(bytes, TOPIC_FAST_MIN)
                || crate::string::is_plain_ascii(bytes, true))
        {
            return Ok(());
        }
        Self::check_slow(bytes)
    }

    #[cold]
    fn check_slow(bytes: &[u8]) -> Result<(), TopicError> {
        crate::string::validate_utf8(bytes)?;
        if bytes.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(())
    }

    /// Wraps bytes that [`check_allow_empty`](Self::check_allow_empty) accepted.
    #[inline]
    pub(crate) fn from_validated(bytes: Bytes) -> TopicName {
        TopicName(MqttString::from_validated(bytes))
    }

    /// The empty topic name, used in a PUBLISH that names its topic through a Topic Alias.
    pub const fn empty() -> TopicName {
        TopicName(MqttString::new())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The name as an [`MqttString`].
    pub fn as_mqtt_str(&self) -> &MqttString {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the alias-only empty name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for TopicName {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

const SHARE_PREFIX: &[u8] = b"$share/";

/// A validated topic filter, possibly a shared subscription `$share/{ShareName}/{filter}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    text: MqttString,
    /// For a shared subscription, the byte length of the ShareName; 0 otherwise.
    share_name_len: u16,
}

impl TopicFilter {
    /// Validates a topic filter [MQTT-4.7.1-1, MQTT-4.7.1-2, MQTT-4.7.3-1, MQTT-4.8.2-1, MQTT-4.8.2-2].
    pub fn from_bytes(bytes: Bytes) -> Result<TopicFilter, TopicError> {
        let text = MqttString::from_bytes(bytes)?;
        let b = text.as_bytes();
        let mut share_name_len = 0u16;
        let filter = if let Some(rest) = b.strip_prefix(SHARE_PREFIX) {
            let name_len = rest.iter().position(|&c| c == b'/');
            let name = &rest[..name_len.unwrap_or(rest.len())];
            if name.is_empty() || name.iter().any(|&c| c == b'+' || c == b'#') {
                return Err(TopicError::InvalidShareName);
            }
            let Some(name_len) = name_len else {
                return Err(TopicError::MissingSharedFilter);
            };
            // name_len <= 65535 because the whole string is.
            share_name_len = name_len as u16;
            let filter = &rest[name_len + 1..];
            if filter.is_empty() {
                return Err(TopicError::MissingSharedFilter);
            }
            filter
        } else {
            b
        };
        validate_filter(filter)?;
        Ok(TopicFilter {
            text,
            share_name_len,
        })
    }

    /// The whole filter as written, `$share/…` prefix included.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The whole filter's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The filter as an [`MqttString`].
    pub fn as_mqtt_str(&self) -> &MqttString {
        &self.text
    }

    /// Whether this is a shared subscription.
    pub fn is_shared(&self) -> bool {
        self.share_name_len != 0
    }

    /// The ShareName of a shared subscription.
    pub fn share_name(&self) -> Option<&str> {
        if !self.is_shared() {
            return None;
        }
        let start = SHARE_PREFIX.len();
        self.as_str()
            .get(start..start + self.share_name_len as usize)
    }

    /// The part matched against topic names: the filter after `$share/{ShareName}/`, or all of it.
    pub fn filter_bytes(&self) -> &[u8] {
        if self.is_shared() {
            &self.as_bytes()[SHARE_PREFIX.len() + self.share_name_len as usize + 1..]
        } else {
            self.as_bytes()
        }
    }

    /// [`filter_bytes`](Self::filter_bytes) as a string.
    pub fn filter_str(&self) -> &str {
        let off = self.as_bytes().len() - self.filter_bytes().len();
        self.as_str().get(off..).unwrap_or_default()
    }

    /// Whether the matched part contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether `topic` matches this filter (see [`filter_matches`]).
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.filter_bytes(), topic.as_bytes())
    }

    /// Length in bytes of the whole filter.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Always false: a valid filter is never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// Checks the wildcards of a filter, level by level in order: a level holding `#` must be the
/// last one and be `#` alone [MQTT-4.7.1-1]; a level holding `+` must be `+` alone
/// [MQTT-4.7.1-2]. Within a level the `#` rule is checked first.
///
/// Only the wildcards are looked at (found 8 bytes at a time): a level without one is always
/// valid, and a wildcard is valid exactly when its neighbours are separators (and, for `#`, when
/// it ends the filter). The level of the first invalid wildcard is then judged by the rules above,
/// which gives the error the level-by-level reading gives.
fn validate_filter(f: &[u8]) -> Result<(), TopicError> {
    if f.is_empty() {
        return Err(TopicError::Empty);
    }
    let n = f.len();
    let mut i = 0;
    while let Some(w) = next_wildcard(f, i) {
        let sep_before = w == 0 || f[w - 1] == b'/';
        let valid = if f[w] == b'#' {
            sep_before && w + 1 == n
        } else {
            sep_before && (w + 1 == n || f[w + 1] == b'/')
        };
        if !valid {
            let start = f[..w].iter().rposition(|&b| b == b'/').map_or(0, |p| p + 1);
            let end = f[w..].iter().position(|&b| b == b'/').map_or(n, |p| w + p);
            let level = &f[start..end];
            return check_level(
                level,
                level.contains(&b'#'),
                level.contains(&b'+'),
                end == n,
            );
        }
        i = w + 1;
    }
    Ok(())
}

/// The position of the first `+` or `#` at or after `from`, skipping 8 bytes at a time where
/// there is none.
#[inline]
fn next_wildcard(f: &[u8], mut from: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_byte = |w: u64, b: u8| {
        let x = w ^ (LO * u64::from(b));
        x.wrapping_sub(LO) & !x & HI
    };
    while let Some(c) = f.get(from..from + 8) {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if has_byte(w, b'+') | has_byte(w, b'#') != 0 {
            // Some byte of this word may be a wildcard (or the test's borrow flagged a 0x2C or
            // 0x24 next to one): look at the bytes.
            break;
        }
        from += 8;
    }
    f.get(from..)?
        .iter()
        .position(|&b| b == b'+' || b == b'#')
        .map(|p| from + p)
}

#[inline]
fn check_level(level: &[u8], hash: bool, plus: bool, last: bool) -> Result<(), TopicError> {
    if hash && (level != b"#" || !last) {
        return Err(TopicError::InvalidMultiLevelWildcard);
    }
    if plus && level != b"+" {
        return Err(TopicError::InvalidSingleLevelWildcard);
    }
    Ok(())
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.text, f)
    }
}

/// Whether the topic name `topic` matches the (non-shared part of a) topic filter `filter`.
///
/// `+` matches exactly one level, `#` the parent level and any number of child levels, and a filter
/// that starts with a wildcard does not match a topic that starts with `$` [MQTT-4.7.2-1]. No
/// normalisation is applied [MQTT-4.7.3-4]. Both arguments are assumed valid.
pub fn filter_matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(fl), Some(tl)) => {
                if fl != b"+" && fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }
    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    #[test]
    fn topic_name_rules_mqtt_4_7_0_1_and_4_7_3_1() {
        assert_eq!(TopicName::try_from(""), Err(TopicError::Empty));
        assert_eq!(TopicName::try_from("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::try_from("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(
            TopicName::try_from("a\0"),
            Err(TopicError::String(StringError::NullCharacter))
        );
        assert!(TopicName::try_from("/").is_ok());
        assert!(TopicName::try_from("$SYS/x").is_ok());
    }

    #[test]
    fn topic_filter_rules_mqtt_4_7_1_1_and_4_7_1_2() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/b",
            "sport/tennis/#",
            "+/#",
        ] {
            assert!(TopicFilter::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a/b#"] {
            assert_eq!(
                TopicFilter::try_from(bad),
                Err(TopicError::InvalidMultiLevelWildcard),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "+a/b"] {
            assert_eq!(
                TopicFilter::try_from(bad),
                Err(TopicError::InvalidSingleLevelWildcard),
                "{bad}"
            );
        }
        assert_eq!(TopicFilter::try_from(""), Err(TopicError::Empty));
    }

    #[test]
    fn matching_spec_examples() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b/c", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/B", false),
            ("a/b", "a/b/", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(filter(f).matches(&name(t)), want, "{f} vs {t}");
        }
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcard_mqtt_4_7_2_1() {
        assert!(!filter("#").matches(&name("$SYS/broker")));
        assert!(!filter("+/broker").matches(&name("$SYS/broker")));
        assert!(filter("$SYS/#").matches(&name("$SYS/broker")));
        assert!(filter("$SYS/+").matches(&name("$SYS/broker")));
        assert!(!filter("$share/g/#").matches(&name("$SYS/x")));
    }

    #[test]
    fn shared_subscriptions_mqtt_4_8_2_1_and_4_8_2_2() {
        let f = filter("$share/group/sensors/+");
        assert!(f.is_shared());
        assert_eq!(f.share_name(), Some("group"));
        assert_eq!(f.filter_str(), "sensors/+");
        assert!(f.matches(&name("sensors/1")));
        assert!(f.has_wildcards());

        assert_eq!(
            TopicFilter::try_from("$share//a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::try_from("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::try_from("$share/#"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::try_from("$share/g"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            TopicFilter::try_from("$share/g/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            TopicFilter::try_from("$share/g/a#"),
            Err(TopicError::InvalidMultiLevelWildcard)
        );
        // "$share" alone or "$sharefoo/x" are ordinary filters.
        assert!(!filter("$share").is_shared());
        assert!(!filter("$shared/x").is_shared());
        let plain = filter("a/b");
        assert_eq!(plain.share_name(), None);
        assert_eq!(plain.filter_str(), "a/b");
        assert!(!plain.has_wildcards());
    }

    /// The one-pass `validate_filter` against the level-by-level definition, on every filter of
    /// up to 8 characters over `a`, `/`, `+`, `#`: same verdict, same error.
    #[test]
    fn validate_filter_matches_the_level_by_level_rules() {
        fn reference(f: &[u8]) -> Result<(), TopicError> {
            if f.is_empty() {
                return Err(TopicError::Empty);
            }
            let mut levels = f.split(|&b| b == b'/').peekable();
            while let Some(level) = levels.next() {
                let last = levels.peek().is_none();
                if level.contains(&b'#') && (level != b"#" || !last) {
                    return Err(TopicError::InvalidMultiLevelWildcard);
                }
                if level.contains(&b'+') && level != b"+" {
                    return Err(TopicError::InvalidSingleLevelWildcard);
                }
            }
            Ok(())
        }
        let alphabet = [b'a', b'/', b'+', b'#'];
        let mut checked = 0;
        for len in 0..=8u32 {
            for mut n in 0..4usize.pow(len) {
                let f: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[n % 4];
                        n /= 4;
                        c
                    })
                    .collect();
                assert_eq!(
                    validate_filter(&f),
                    reference(&f),
                    "{:?}",
                    String::from_utf8_lossy(&f)
                );
                checked += 1;
                // The same after prefixes that put it past the first words (the word-at-a-time
                // skip), and with a wildcard-free suffix.
                if len <= 6 {
                    for pad in [
                        &b"abcdefg/"[..],
                        b"abcdefghijklmn/",
                        b"abcdefghijklmnopq",
                        b"+/a,$",
                    ] {
                        for g in [[pad, &f].concat(), [&f[..], b"/abcdefghij"].concat()] {
                            let shown = String::from_utf8_lossy(&g);
                            assert_eq!(validate_filter(&g), reference(&g), "{shown:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(checked, (0..=8).map(|l| 4usize.pow(l)).sum::<usize>());
    }
}
