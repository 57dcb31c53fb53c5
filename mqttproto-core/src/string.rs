//! Validated MQTT UTF-8 strings.

use bytes::Bytes;
use std::fmt;

/// The largest number of bytes an MQTT string or binary field can hold (a two-byte length prefix).
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// Why a byte sequence is not a valid MQTT UTF-8 Encoded String.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    /// The bytes are not well-formed UTF-8 (surrogates included) [MQTT-1.5.4-1].
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// The string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    /// The string is longer than 65,535 bytes.
    #[error("string of {0} bytes exceeds 65,535 bytes")]
    TooLong(usize),
}

/// Checks the rules of an MQTT UTF-8 Encoded String (section 1.5.4).
///
/// Rust's UTF-8 validation already rejects encoded surrogates (U+D800..U+DFFF) and overlong forms.
pub fn validate_utf8(bytes: &[u8]) -> Result<&str, StringError> {
    check(bytes)?;
    std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)
}

/// [`validate_utf8`] without producing the `&str`: one word-at-a-time pass for the usual
/// ASCII string, the full check otherwise.
#[inline]
pub(crate) fn check(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong(bytes.len()));
    }
    if ascii_from(bytes, 0x01) {
        return Ok(());
    }
    check_slow(bytes)
}

#[cold]
fn check_slow(bytes: &[u8]) -> Result<(), StringError> {
    std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Flags (bit 7 of) every zero byte of `w`. It may also flag a 0x01 byte just above a zero byte
/// (the borrow), which only sends the input to the full check; it never misses a zero byte.
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

#[inline(always)]
fn word_flags(w: u64, wildcards: bool) -> u64 {
    let mut f = (w & HI) | zero_bytes(w);
    if wildcards {
        f |= zero_bytes(w ^ (LO * u64::from(b'+'))) | zero_bytes(w ^ (LO * u64::from(b'#')));
    }
    f
}

/// Whether every byte lies in `min..=0x7F`, checked 8 bytes at a time with two additions and
/// three bitwise operations per word. `min` is between 0x01 and 0x7F.
///
/// With `min` 0x01 this is exactly "ASCII without U+0000", a valid MQTT string. With `min` 0x2C it
/// accepts the characters of nearly every real topic name (letters, digits, `/`, `-`, `.`, `_`)
/// and rejects U+0000, `#` (0x23), `+` (0x2B) and every non-ASCII byte, so `true` proves a valid
/// topic name; `false` only means a slower exact check must decide (a space, `$` or `!` fall
/// below 0x2C).
#[inline]
pub(crate) fn ascii_from(bytes: &[u8], min: u8) -> bool {
    debug_assert!((0x01..=0x7F).contains(&min));
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| b >= min && b < 0x80);
    }
    // For a byte b < 0x80, b + (0x80 - min) has bit 7 set exactly when b >= min, and cannot carry
    // into the next byte. A byte >= 0x80 is caught by its own bit 7 (whatever its carry does to the
    // byte above, the word is rejected).
    let k = LO * u64::from(0x80 - min);
    let word = |c: &[u8]| {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        w | !w.wrapping_add(k)
    };
    let mut bad = 0u64;
    let mut pairs = bytes.chunks_exact(16);
    for c in &mut pairs {
        bad |= word(&c[..8]) | word(&c[8..]);
    }
    let rest = pairs.remainder();
    if rest.len() > 8 {
        bad |= word(&rest[..8]);
    }
    if !rest.is_empty() {
        // The last 8 bytes, overlapping bytes already checked.
        bad |= word(&bytes[bytes.len() - 8..]);
    }
    bad & HI == 0
}

/// Whether every byte is ASCII and not NUL (and, with `wildcards`, neither `+` nor `#`), checked
/// 8 bytes at a time. `true` proves the bytes are a valid MQTT string (topic name); `false` only
/// means the full check must decide.
#[inline]
pub(crate) fn is_plain_ascii(bytes: &[u8], wildcards: bool) -> bool {
    let mut flags = 0u64;
    if bytes.len() >= 8 {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            flags |= word_flags(u64::from_le_bytes(c.try_into().unwrap()), wildcards);
        }
        if !chunks.remainder().is_empty() {
            // The last 8 bytes, overlapping bytes already checked.
            let c = &bytes[bytes.len() - 8..];
            flags |= word_flags(u64::from_le_bytes(c.try_into().unwrap()), wildcards);
        }
    } else {
        for &b in bytes {
            let bad = b >= 0x80 || b == 0 || (wildcards && (b == b'+' || b == b'#'));
            flags |= u64::from(bad);
        }
    }
    flags == 0
}

/// A UTF-8 Encoded String as MQTT defines it: well-formed UTF-8, no U+0000, at most 65,535 bytes.
///
/// It is a cheap, reference-counted slice ([`Bytes`]): a string decoded from a packet shares the
/// packet's buffer, and cloning it does not copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(Bytes);

impl MqttString {
    /// The empty string.
    pub const fn new() -> Self {
        MqttString(Bytes::new())
    }

    /// Validates `bytes` and wraps them without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        check(&bytes)?;
        Ok(MqttString(bytes))
    }

    /// Wraps bytes the caller has already proved valid (with [`check`]).
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        MqttString(bytes)
    }

    /// Wraps a static string, validating it.
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::from_static(s.as_bytes()))
    }

    /// The string's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string as `&str`.
    ///
    /// The content was validated when the value was built; since this crate forbids `unsafe`, the
    /// UTF-8 check runs again here (it is linear and fast). Hot paths use [`as_bytes`](Self::as_bytes).
    pub fn as_str(&self) -> &str {
        // Cannot fail: every constructor validated the bytes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the underlying shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for MqttString {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_null_character_mqtt_1_5_4_2() {
        assert_eq!(
            MqttString::try_from("a\0b"),
            Err(StringError::NullCharacter)
        );
    }

    #[test]
    fn rejects_surrogates_mqtt_1_5_4_1() {
        // U+D800 encoded as if it were a scalar value (CESU style) is ill-formed UTF-8.
        let b = Bytes::from_static(&[0xED, 0xA0, 0x80]);
        assert_eq!(MqttString::from_bytes(b), Err(StringError::InvalidUtf8));
        let b = Bytes::from_static(&[0xC0, 0x80]); // overlong NUL
        assert_eq!(MqttString::from_bytes(b), Err(StringError::InvalidUtf8));
    }

    #[test]
    fn keeps_bom_mqtt_1_5_4_3() {
        let s = MqttString::from_bytes(Bytes::from_static(b"\xEF\xBB\xBFx")).unwrap();
        assert_eq!(s.as_bytes(), b"\xEF\xBB\xBFx");
        assert_eq!(s.as_str(), "\u{FEFF}x");
    }

    /// `ascii_from` against a byte-at-a-time reference: every byte value at every position of
    /// every length up to 40 (all word and remainder layouts), in a background of valid bytes
    /// chosen to sit right at the edges (the minimum itself and 0x7F), for both minimums in use.
    #[test]
    fn ascii_from_matches_the_bytewise_rule() {
        for min in [0x01u8, 0x2C] {
            let reference = |b: &[u8]| b.iter().all(|&c| c >= min && c < 0x80);
            for len in 1..=40usize {
                for background in [min, 0x7F, b'a'] {
                    let mut buf = vec![background; len];
                    assert!(ascii_from(&buf, min));
                    for pos in 0..len {
                        for v in 0..=255u8 {
                            buf[pos] = v;
                            assert_eq!(
                                ascii_from(&buf, min),
                                reference(&buf),
                                "min {min:#x} len {len} pos {pos} byte {v:#x}"
                            );
                        }
                        buf[pos] = background;
                    }
                }
            }
            // Two bad bytes next to each other (a carry out of one must not hide the other).
            for v in 0..=255u8 {
                for w in 0..=255u8 {
                    let mut buf = [b'a'; 16];
                    buf[6] = v;
                    buf[7] = w;
                    assert_eq!(ascii_from(&buf, min), reference(&buf), "{v:#x} {w:#x}");
                }
            }
        }
    }

    #[test]
    fn rejects_too_long() {
        let long = "a".repeat(65_536);
        assert_eq!(
            MqttString::try_from(long.as_str()),
            Err(StringError::TooLong(65_536))
        );
        assert!(MqttString::try_from("a".repeat(65_535)).is_ok());
    }
}
