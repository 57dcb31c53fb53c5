//! Fuzz target for the streaming MQTT 5 decoder.
//!
//! Input layout (see fuzz/README.md):
//!
//! | byte | meaning                                                                  |
//! | ---- | ------------------------------------------------------------------------ |
//! | 0    | bits 0-2: how the max packet size is chosen; bits 3-5: the split pattern |
//! | 1    | parameter of the max packet size                                         |
//! | 2    | parameter of the split pattern                                           |
//! | 3    | how far below its encoded length a decoded packet is shrunk              |
//! | 4..  | the bytes received from the peer                                         |
//!
//! The wire bytes are fed into a `BytesMut` chunk by chunk and `decode` is called in a loop after
//! each chunk, as a connection driver would. Every decoded packet must re-encode (with
//! `encoded_len` equal to the real size) and decode back to an equal packet; `shrink_to` must agree
//! with `encoded_len`; every error must carry a reason code a DISCONNECT or CONNACK can send. The
//! chunked run must see exactly what a one-shot run over the same bytes sees.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqttproto_core::codec::{decode, decode_fixed_header, decode_packet, Packet};
use mqttproto_core::{DecodeError, MqttString, PacketType, ProtocolVersion, UserProperties};

const V5: ProtocolVersion = ProtocolVersion::V5;
const HEADER_LEN: usize = 4;

fn max_packet_size(selector: u8, param: u8) -> u32 {
    let p = u32::from(param);
    match selector & 0x07 {
        0 | 1 => u32::MAX,
        // The largest packet MQTT can express.
        2 => 268_435_455 + 5,
        // Tiny limits, down to a bare fixed header.
        3 => 2 + p,
        4 => 64 + p * 16,
        5 => 1u32 << (p % 32),
        6 => 65_536 + p,
        // 0 and 1 included: nothing fits.
        _ => p,
    }
}

/// The sizes of the successive chunks of `len` bytes.
fn chunk_sizes(mode: u8, param: u8, len: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = len;
    let mut state = u32::from(param) | 0x100; // never 0, for the xorshift
    let mut fib = (1usize, 1usize);
    while left > 0 {
        let want = match mode & 0x07 {
            0 | 1 => left,
            2 => 1,
            3 => usize::from(param) + 1,
            4 | 5 => {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let bound = if mode & 0x07 == 4 {
                    8
                } else {
                    usize::from(param) + 1
                };
                1 + (state as usize) % bound
            }
            6 => {
                if sizes.is_empty() {
                    (usize::from(param) % len).max(1)
                } else {
                    left
                }
            }
            _ => {
                let n = fib.0;
                fib = (fib.1, fib.0 + fib.1);
                n
            }
        };
        let n = want.clamp(1, left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// What a run of the decoder over some input saw.
#[derive(Debug, PartialEq)]
struct Trace {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    /// Bytes still buffered at the end (a partial packet), when there was no error.
    leftover: usize,
}

fn run(wire: &[u8], max: u32, chunks: &[usize], shrink: u8) -> Trace {
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut packets = Vec::new();
    for &n in chunks {
        buf.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
        loop {
            assert_eq!(buf.len(), fed - consumed);
            let before = buf.len();
            let header = decode_fixed_header(&buf);
            match decode(&mut buf, V5, max) {
                Ok(Some(packet)) => {
                    let used = before - buf.len();
                    // No infinite loop: a decoded packet always consumes its bytes.
                    assert!(used > 0, "Ok(Some) consumed nothing");
                    let header = header
                        .expect("decode succeeded but the fixed header did not parse")
                        .expect("decode returned a packet from an incomplete fixed header");
                    assert_eq!(used, header.packet_len(), "consumed != fixed header's size");
                    assert!(
                        used as u64 <= u64::from(max),
                        "packet above the limit accepted"
                    );
                    assert_eq!(header.packet_type, packet.packet_type());
                    let frame = &wire[consumed..consumed + used];
                    consumed += used;
                    check_packet(&packet, frame, shrink);
                    packets.push(packet);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    assert_eq!(
                        &buf[..],
                        &wire[consumed..fed],
                        "Ok(None) changed the buffer"
                    );
                    match header {
                        Ok(None) => {}
                        Ok(Some(h)) => assert!(
                            h.packet_len() > buf.len(),
                            "Ok(None) with a whole packet buffered"
                        ),
                        Err(e) => panic!("fixed header error {e:?} but decode said Ok(None)"),
                    }
                    break;
                }
                Err(e) => {
                    check_error(&e);
                    return Trace {
                        packets,
                        error: Some(e),
                        leftover: 0,
                    };
                }
            }
        }
    }
    Trace {
        packets,
        error: None,
        leftover: buf.len(),
    }
}

fn check_error(e: &DecodeError) {
    let rc = e.reason_code();
    assert!(
        rc.is_valid_for(PacketType::Disconnect) || rc.is_valid_for(PacketType::ConnAck),
        "{e:?} maps to {rc:?}, which neither DISCONNECT nor CONNACK can carry"
    );
    assert!(rc.is_error(), "{e:?} maps to a success code {rc:?}");
    let text = e.to_string();
    assert!(!text.is_empty());
    let _ = format!("{e:?}");
    if let Some(s) = e.statement() {
        assert!(s.starts_with("MQTT-"), "{s}");
    }
}

fn check_packet(p: &Packet, frame: &[u8], shrink: u8) {
    // The same frame through the one-shot API gives the same packet.
    let again = decode_packet(Bytes::copy_from_slice(frame), V5);
    assert_eq!(again.as_ref(), Ok(p), "decode_packet disagrees with decode");

    // A decoded packet must encode, to exactly encoded_len bytes, and decode back to itself.
    let len = p.encoded_len(V5);
    if let Err(e) = p.validate(V5) {
        panic!("decoded packet fails validate: {e:?}\n{p:?}");
    }
    let bytes = match p.to_bytes(V5) {
        Ok(b) => b,
        Err(e) => panic!("decoded packet does not encode: {e:?}\n{p:?}"),
    };
    assert_eq!(bytes.len(), len, "encoded_len is wrong for {p:?}");
    assert_eq!(
        len,
        1 + varint_len(p.remaining_len(V5)) + p.remaining_len(V5)
    );
    // The encoder writes the canonical (shortest) form, never more than was received.
    assert!(
        bytes.len() <= frame.len(),
        "re-encoding grew the packet from {} to {} bytes: {p:?}",
        frame.len(),
        bytes.len()
    );
    roundtrip(p, &bytes);

    // shrink_to on a clone.
    let target = if shrink == 0xFF {
        u32::MAX
    } else if shrink < 0x80 {
        len.saturating_sub(usize::from(shrink)) as u32
    } else {
        len.saturating_sub(usize::from(shrink - 0x80) * 64) as u32
    };
    let mut q = p.clone();
    let fits = q.shrink_to(target, V5);
    let qlen = q.encoded_len(V5);
    assert_eq!(
        fits,
        qlen <= target as usize,
        "shrink_to({target}) said {fits} but the packet is now {qlen} bytes"
    );
    assert!(qlen <= len, "shrink_to grew the packet");
    assert_eq!(q.packet_type(), p.packet_type());
    if len <= target as usize {
        assert_eq!(&q, p, "shrink_to changed a packet that already fit");
    }
    check_shrink_fields(p, &q, target);
    let qbytes = q.to_bytes(V5).expect("a shrunk packet must encode");
    assert_eq!(qbytes.len(), qlen);
    roundtrip(&q, &qbytes);
}

fn varint_len(v: usize) -> usize {
    mqttproto_core::codec::varint_len(v as u32)
}

/// Encoded bytes decode back, through both APIs, to an equal packet.
fn roundtrip(p: &Packet, bytes: &Bytes) {
    match decode_packet(bytes.clone(), V5) {
        Ok(back) => assert_eq!(&back, p, "roundtrip changed the packet"),
        Err(e) => panic!("re-encoded packet does not decode: {e:?}\n{p:?}\n{bytes:02x?}"),
    }
    let mut buf = BytesMut::from(&bytes[..]);
    let back = decode(&mut buf, V5, bytes.len() as u32)
        .expect("re-encoded packet does not stream-decode")
        .expect("re-encoded packet is incomplete");
    assert_eq!(&back, p);
    assert!(buf.is_empty());
}

/// The Reason String and User Properties of the packet types whose properties may be dropped.
fn droppable(p: &mut Packet) -> Option<(&mut Option<MqttString>, &mut UserProperties)> {
    Some(match p {
        Packet::ConnAck(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        Packet::SubAck(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        Packet::UnsubAck(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        Packet::Disconnect(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        Packet::Auth(p) => (
            &mut p.properties.reason_string,
            &mut p.properties.user_properties,
        ),
        _ => return None,
    })
}

/// shrink_to drops the Reason String first, then the User Properties, and touches nothing else.
fn check_shrink_fields(p: &Packet, q: &Packet, target: u32) {
    let mut p = p.clone();
    let mut q = q.clone();
    let Some((p_reason, p_users)) = droppable(&mut p) else {
        assert_eq!(
            p, q,
            "shrink_to changed a packet whose properties may not be dropped"
        );
        return;
    };
    let p_reason = p_reason.clone();
    let p_users = p_users.clone();
    let (q_reason, q_users) = droppable(&mut q).expect("shrink_to changed the packet type");
    assert!(q_reason.is_none() || *q_reason == p_reason);
    assert!(q_users.is_empty() || *q_users == p_users);
    if !p_users.is_empty() && q_users.is_empty() {
        assert!(
            q_reason.is_none(),
            "User Properties dropped before the Reason String"
        );
    }
    let (q_reason, q_users) = (q_reason.clone(), q_users.clone());
    // Apart from those two fields, the packets are equal.
    let mut r = p.clone();
    {
        let (r_reason, r_users) = droppable(&mut r).unwrap();
        *r_reason = q_reason.clone();
        *r_users = q_users.clone();
    }
    assert_eq!(
        r, q,
        "shrink_to changed more than the Reason String and User Properties"
    );
    // It drops no more than it needs to.
    if p_reason.is_some() && q_reason.is_none() {
        let mut with_reason = q.clone();
        *droppable(&mut with_reason).unwrap().0 = p_reason.clone();
        *droppable(&mut with_reason).unwrap().1 = p_users.clone();
        assert!(with_reason.encoded_len(V5) > target as usize);
    }
    if !p_users.is_empty() && q_users.is_empty() {
        let mut with_users = q.clone();
        *droppable(&mut with_users).unwrap().1 = p_users.clone();
        assert!(
            with_users.encoded_len(V5) > target as usize,
            "User Properties dropped although the packet fit without its Reason String"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let (cfg, wire) = data.split_at(HEADER_LEN);
    let max = max_packet_size(cfg[0], cfg[1]);
    let split_mode = (cfg[0] >> 3) & 0x07;
    let chunks = chunk_sizes(split_mode, cfg[2], wire.len());
    assert_eq!(chunks.iter().sum::<usize>(), wire.len());
    let trace = run(wire, max, &chunks, cfg[3]);
    if chunks.len() > 1 {
        // However the bytes arrive, the decoder sees the same packets and the same error.
        let whole = run(wire, max, &[wire.len()], cfg[3]);
        assert_eq!(
            trace, whole,
            "chunked decoding differs from one-shot decoding"
        );
    }
});
