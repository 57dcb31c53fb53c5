//! Primitive data representations (section 1.5): integers, variable byte integers, strings,
//! binary data, and a bounds-checked reader over one packet's body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::string::{MqttString, StringError};
use crate::topic::{TopicError, TopicName};
use crate::types::{PacketId, PacketType};

/// The largest value of a Variable Byte Integer, and so of a remaining length.
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

/// Parses a Variable Byte Integer at the start of `buf`.
///
/// `Ok(None)` when `buf` ends before the integer does. Non-minimal encodings are rejected
/// [MQTT-1.5.5-1], and so are encodings longer than 4 bytes.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::NonMinimalVarint);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::VarintTooLong)
}

/// The number of bytes `v` takes as a Variable Byte Integer.
pub const fn varint_len(v: u32) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Appends `v` as a Variable Byte Integer. `v` must not exceed [`MAX_REMAINING_LENGTH`].
#[inline]
pub fn put_varint(buf: &mut BytesMut, v: u32) {
    debug_assert!(v <= MAX_REMAINING_LENGTH);
    // One fixed-size append per size, rather than one capacity check per byte.
    if v < 0x80 {
        buf.put_u8(v as u8);
    } else if v < 0x4000 {
        buf.put_slice(&[(v as u8) | 0x80, (v >> 7) as u8]);
    } else if v < 0x20_0000 {
        buf.put_slice(&[(v as u8) | 0x80, ((v >> 7) as u8) | 0x80, (v >> 14) as u8]);
    } else {
        buf.put_slice(&[
            (v as u8) | 0x80,
            ((v >> 7) as u8) | 0x80,
            ((v >> 14) as u8) | 0x80,
            (v >> 21) as u8,
        ]);
    }
}

/// Appends a length-prefixed byte field (UTF-8 string or binary data). The length was checked.
#[inline]
pub fn put_prefixed(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= u16::MAX as usize);
    buf.put_u16(data.len() as u16);
    buf.extend_from_slice(data);
}

/// A bounds-checked cursor over one packet's body.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    /// End of the readable region: `buf.len()`, or the end of a nested block.
    end: usize,
    packet: PacketType,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, packet: PacketType) -> Reader {
        Reader {
            end: buf.len(),
            buf,
            pos: 0,
            packet,
        }
    }

    /// A reader over `buf` that starts at `pos`.
    #[inline]
    pub(crate) fn new_at(buf: Bytes, pos: usize, packet: PacketType) -> Reader {
        debug_assert!(pos <= buf.len());
        Reader {
            end: buf.len(),
            buf,
            pos,
            packet,
        }
    }

    #[inline]
    pub(crate) fn packet(&self) -> PacketType {
        self.packet
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    #[inline]
    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= self.end {
            return Err(self.truncated());
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.remaining() < 2 {
            return Err(self.truncated());
        }
        let s = &self.buf[self.pos..self.pos + 2];
        let v = u16::from_be_bytes([s[0], s[1]]);
        self.pos += 2;
        Ok(v)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.remaining() < 4 {
            return Err(self.truncated());
        }
        let s = &self.buf[self.pos..self.pos + 4];
        let v = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        self.pos += 4;
        Ok(v)
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.buf[self.pos..self.end])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.truncated()),
        }
    }

    /// A property identifier: a Variable Byte Integer, in practice always one byte.
    #[inline(always)]
    pub(crate) fn property_id(&mut self) -> Result<u32, DecodeError> {
        match self.buf[..self.end].get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u32::from(b))
            }
            _ => self.varint(),
        }
    }

    /// A packet identifier, which must not be 0 [MQTT-2.2.1-3].
    #[inline]
    pub(crate) fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId {
            packet: self.packet,
        })
    }

    /// Everything left.
    ///
    /// The reader gives up its buffer rather than sharing it: no reference count is touched, and
    /// the reader is left empty.
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        let mut b = std::mem::take(&mut self.buf);
        b.truncate(self.end);
        b.advance(self.pos);
        self.pos = 0;
        self.end = 0;
        b
    }

    /// Limits reading to the next `n` bytes; returns what [`end_limit`](Self::end_limit) needs.
    #[inline]
    pub(crate) fn limit(&mut self, n: usize) -> Result<usize, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let outer = self.end;
        self.end = self.pos + n;
        Ok(outer)
    }

    /// Lifts a limit set by [`limit`](Self::limit), which must have been read to its end.
    #[inline]
    pub(crate) fn end_limit(&mut self, outer: usize) {
        debug_assert_eq!(self.pos, self.end);
        self.end = outer;
    }

    /// Binary Data: a two-byte length and that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let (start, end) = self.prefixed()?;
        Ok(self.buf.slice(start..end))
    }

    /// Steps over a length-prefixed field (string or binary data) and returns where its bytes
    /// are, so that they can be checked in place before they are sliced off.
    #[inline]
    fn prefixed(&mut self) -> Result<(usize, usize), DecodeError> {
        let b: &[u8] = &self.buf[..self.end];
        let Some(&[h, l]) = b.get(self.pos..self.pos + 2) else {
            return Err(self.truncated());
        };
        let start = self.pos + 2;
        let end = start + usize::from(u16::from_be_bytes([h, l]));
        if end > b.len() {
            return Err(self.truncated());
        }
        self.pos = end;
        Ok((start, end))
    }

    /// A UTF-8 Encoded String [MQTT-1.5.4-1, MQTT-1.5.4-2].
    #[inline(always)]
    pub(crate) fn string(&mut self, field: &'static str) -> Result<MqttString, DecodeError> {
        let (start, end) = self.prefixed()?;
        if let Err(error) = crate::string::check(&self.buf[start..end]) {
            return Err(self.string_error(field, error));
        }
        Ok(MqttString::from_validated(self.buf.slice(start..end)))
    }

    /// How many entries are left if each is a non-empty length-prefixed field followed by
    /// `trailer` bytes (the filters of a SUBSCRIBE or an UNSUBSCRIBE), so that a list can be
    /// allocated once; at most 1,024 (a longer list grows as it is read). It only hops over the
    /// length prefixes, and stops at an empty field or one that runs past the end (reading the
    /// entries reports them). Counting only non-empty fields keeps the reservation within what
    /// valid entries would take: a peer cannot make it larger per byte sent than a valid packet.
    #[inline]
    pub(crate) fn count_prefixed(&self, trailer: usize) -> usize {
        const COUNT_MAX: usize = 1024;
        let b = &self.buf[..self.end];
        let (mut at, mut n) = (self.pos, 0);
        while let Some(&[h, l]) = b.get(at..at + 2) {
            let len = usize::from(u16::from_be_bytes([h, l]));
            at += 2 + len + trailer;
            if len == 0 || at > b.len() || n == COUNT_MAX {
                break;
            }
            n += 1;
        }
        n
    }

    /// Steps over a UTF-8 Encoded String after checking it in place [MQTT-1.5.4-1, MQTT-1.5.4-2].
    #[inline(always)]
    pub(crate) fn skip_string(&mut self, field: &'static str) -> Result<(), DecodeError> {
        let (start, end) = self.prefixed()?;
        crate::string::check(&self.buf[start..end]).map_err(|error| self.string_error(field, error))
    }

    /// The position of the next byte to read, from the start of the buffer.
    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes of the buffer, by position (already read, or not).
    #[inline]
    pub(crate) fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// A shared slice of the buffer, by position.
    #[inline]
    pub(crate) fn slice(&self, range: std::ops::Range<usize>) -> Bytes {
        self.buf.slice(range)
    }

    /// A topic name (not empty, no wildcards), checked in place; `error` reports an invalid one.
    #[inline]
    pub(crate) fn topic_name(
        &mut self,
        error: impl FnOnce(TopicError) -> DecodeError,
    ) -> Result<TopicName, DecodeError> {
        let (start, end) = self.prefixed()?;
        TopicName::check(&self.buf[start..end]).map_err(error)?;
        Ok(TopicName::from_validated(self.buf.slice(start..end)))
    }

    pub(crate) fn string_error(&self, field: &'static str, error: StringError) -> DecodeError {
        DecodeError::InvalidString {
            packet: self.packet,
            field,
            error,
        }
    }

    /// Fails if bytes are left.
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.end {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        for (v, len) in [
            (0u32, 1usize),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (268_435_455, 4),
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), len);
            assert_eq!(varint_len(v), len);
            assert_eq!(read_varint(&b).unwrap(), Some((v, len)));
        }
    }

    #[test]
    fn varint_non_minimal_is_rejected_mqtt_1_5_5_1() {
        assert_eq!(
            read_varint(&[0x80, 0x00]),
            Err(DecodeError::NonMinimalVarint)
        );
        assert_eq!(
            read_varint(&[0xFF, 0x80, 0x00]),
            Err(DecodeError::NonMinimalVarint)
        );
    }

    #[test]
    fn varint_longer_than_four_bytes_is_rejected() {
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::VarintTooLong)
        );
        // Detected as soon as the fourth byte carries a continuation bit.
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::VarintTooLong)
        );
    }

    #[test]
    fn rest_takes_the_remainder_and_leaves_the_reader_finished() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x01abc"), PacketType::Publish);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.rest(), Bytes::from_static(b"abc"));
        assert!(r.is_empty());
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(r.rest(), Bytes::new());
        assert!(r.u8().is_err());
    }

    #[test]
    fn count_prefixed_hops_over_whole_entries_only() {
        // Two filters with an options byte each, then one whose length runs past the end.
        let r = Reader::new(
            Bytes::from_static(b"\x00\x01a\x01\x00\x02bc\x02\x00\x05ab"),
            PacketType::Subscribe,
        );
        assert_eq!(r.count_prefixed(1), 2);
        // Counting stops at an empty field, which no valid filter is.
        let r = Reader::new(
            Bytes::from_static(b"\x00\x01a\x00\x00\x00\x01b"),
            PacketType::Unsubscribe,
        );
        assert_eq!(r.count_prefixed(0), 1);
        // At most 1,024, however many there are.
        let many: Vec<u8> = (0..2000).flat_map(|_| [0, 1, b'a']).collect();
        let r = Reader::new(Bytes::from(many), PacketType::Unsubscribe);
        assert_eq!(r.count_prefixed(0), 1024);
        let r = Reader::new(Bytes::from_static(b"\x00"), PacketType::Unsubscribe);
        assert_eq!(r.count_prefixed(0), 0);
    }

    #[test]
    fn varint_partial_is_not_an_error() {
        assert_eq!(read_varint(&[]), Ok(None));
        assert_eq!(read_varint(&[0x80, 0x80]), Ok(None));
    }
}
