//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use mqttproto_core::codec::{decode, decode_packet, Packet};
use mqttproto_core::{DecodeError, ProtocolVersion};

/// The protocol version under test.
pub const V5: ProtocolVersion = ProtocolVersion::V5;

/// Parses hex digits, ignoring whitespace.
pub fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd hex: {s}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

/// Decodes one whole packet given in hex, checks that re-encoding gives the same bytes and that
/// `encoded_len` agrees, and returns it.
pub fn decode_hex(s: &str) -> Packet {
    let bytes = hex(s);
    let p =
        decode_packet(bytes.clone(), V5).unwrap_or_else(|e| panic!("{s} failed to decode: {e}"));
    assert_eq!(p.encoded_len(V5), bytes.len(), "encoded_len of {s}");
    assert_eq!(p.to_bytes(V5).unwrap(), bytes, "re-encoding of {s}");
    // The streaming decoder, fed one byte at a time, agrees.
    let mut buf = BytesMut::new();
    let mut got = None;
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match decode(&mut buf, V5, u32::MAX).unwrap() {
            Some(q) => {
                assert_eq!(i, bytes.len() - 1, "decoded before the last byte");
                got = Some(q);
            }
            None => assert!(i < bytes.len() - 1),
        }
    }
    assert_eq!(got.as_ref(), Some(&p));
    p
}

/// Decodes a packet given in hex with the streaming decoder and returns its error.
pub fn reject_hex(s: &str) -> DecodeError {
    let mut buf = BytesMut::from(&hex(s)[..]);
    match decode(&mut buf, V5, u32::MAX) {
        Err(e) => e,
        Ok(p) => panic!("{s} was accepted: {p:?}"),
    }
}
