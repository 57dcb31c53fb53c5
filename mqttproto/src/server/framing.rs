//! Packet boundaries in a connection's inbound bytes, for the brokers' readers.
//!
//! A reader that hands every read to the core as it comes splits a large PUBLISH into many
//! pieces, which the core copies back together. With a [`Framer`], a reader keeps a large
//! packet in its own buffer until it is whole, growing the buffer as the bytes arrive (never
//! further ahead of them than they are long, so a declared length alone allocates little),
//! and hands it over in one piece: the core decodes it in place
//! (`Broker::handle_input`), and its payload goes out to subscribers as the same bytes.

use mqttproto_core::codec::decode_fixed_header;

/// Packets larger than this are kept together by the reader; smaller ones go as they come.
pub(crate) const HOLD_MIN: usize = 64 * 1024;

/// Bytes of input after which a broker's owner drains the core's output (and checks for
/// writers that fell behind) even if more inputs wait. An input can be a whole large packet,
/// so a batch counted in inputs alone could route tens of MiB to a subscriber in one flush,
/// past its outbound bound, before the owner pauses for it.
pub(crate) const INBOUND_BATCH_BYTES: usize = 256 * 1024;

/// What a reader does with its buffer after a read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Hand over the whole buffer.
    All,
    /// Hand over the first `whole` bytes (whole packets; possibly none) and keep the rest:
    /// the start of a packet of `total` bytes (0 when its fixed header is not complete yet).
    Hold { whole: usize, total: usize },
}

/// Tracks where packets begin in a connection's inbound stream.
#[derive(Debug)]
pub(crate) struct Framer {
    /// The broker's Maximum Packet Size: a larger packet is handed over as it comes, so that
    /// the core refuses it (0x95) as soon as its fixed header arrives instead of the reader
    /// gathering it.
    max: u32,
    /// Bytes still to come of a packet whose start was handed over: the next buffer begins
    /// that far before a packet boundary. (A packet is at most 256 MiB: `u32` keeps a
    /// connection's I/O task small.)
    skip: u32,
    /// A fixed header did not parse: from now on everything is handed over as it comes, and
    /// the core reports the error.
    lost: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(u32::MAX)
    }
}

impl Framer {
    /// A framer for a connection whose packets may be at most `max_packet_size` bytes.
    pub(crate) fn new(max_packet_size: u32) -> Self {
        Framer {
            max: max_packet_size,
            skip: 0,
            lost: false,
        }
    }

    /// Looks at the reader's buffer (what it kept, then what it read since it last handed
    /// something over) and says what to hand over.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Framing {
        if self.lost {
            return Framing::All;
        }
        let skip = self.skip as usize;
        if skip >= buf.len() {
            self.skip = (skip - buf.len()) as u32;
            return Framing::All;
        }
        self.skip = 0;
        let mut pos = skip;
        loop {
            if pos == buf.len() {
                return Framing::All;
            }
            let header = match decode_fixed_header(&buf[pos..]) {
                Ok(Some(h)) => h,
                // At most four bytes of a fixed header: kept until the rest arrives.
                Ok(None) => {
                    return Framing::Hold {
                        whole: pos,
                        total: 0,
                    }
                }
                Err(_) => {
                    self.lost = true;
                    return Framing::All;
                }
            };
            let total = header.packet_len();
            if buf.len() - pos >= total {
                pos += total;
            } else if total > HOLD_MIN && total <= self.max as usize {
                return Framing::Hold { whole: pos, total };
            } else {
                self.skip = u32::try_from(total - (buf.len() - pos)).unwrap_or(u32::MAX);
                return Framing::All;
            }
        }
    }
}

/// How much to ask of the socket next for a held packet of `total` bytes of which `held` are
/// in the buffer: what is missing, but at most as much again as has arrived (at least
/// [`HOLD_MIN`]), so that the buffer grows with the bytes that came rather than with what the
/// peer declared.
pub(crate) fn hold_read_size(held: usize, total: usize) -> usize {
    total.saturating_sub(held).min(held.max(HOLD_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use mqttproto_core::codec::{Packet, Publish};
    use mqttproto_core::{ProtocolVersion, TopicName};

    fn publish(len: usize) -> Vec<u8> {
        let p = Publish::new(
            TopicName::try_from("t").unwrap(),
            Bytes::from(vec![7u8; len]),
        );
        Packet::Publish(p)
            .to_bytes(ProtocolVersion::V5)
            .unwrap()
            .to_vec()
    }

    /// Feeds `stream` to a reader that reads `step` bytes at a time and follows the framer;
    /// returns what it hands over.
    fn read_through(stream: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut framer = Framer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let end = (at + step).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            match framer.scan(&buf) {
                Framing::All => out.push(buf.split().to_vec()),
                Framing::Hold { whole, .. } => {
                    if whole > 0 {
                        out.push(buf.split_to(whole).to_vec());
                    }
                }
            }
        }
        if !buf.is_empty() {
            out.push(buf.to_vec());
        }
        out
    }

    #[test]
    fn a_large_packet_is_handed_over_whole_and_small_ones_as_they_come() {
        let big = publish(300 * 1024);
        let small = publish(100);
        let mut stream = small.clone();
        let first_big = stream.len();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&small);
        let second_big = stream.len();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&small);
        for step in [1, 3, 1000, 4096, 64 * 1024, 1 << 20] {
            let pieces = read_through(&stream, step);
            assert_eq!(
                pieces.concat(),
                stream,
                "step {step}: bytes lost or reordered"
            );
            // Each large packet lies within one piece: the core gets it whole.
            let mut bounds = vec![0];
            for p in &pieces {
                bounds.push(bounds.last().unwrap() + p.len());
            }
            for start in [first_big, second_big] {
                let end = start + big.len();
                assert!(
                    bounds.windows(2).any(|w| w[0] <= start && end <= w[1]),
                    "step {step}: the packet at {start} was split"
                );
            }
        }
    }

    /// Random packet sizes (some over the limit, some over `HOLD_MIN`), random read sizes
    /// bounded by what the reader asks for: the pieces handed over are the stream, each large
    /// packet within the limit lies in one piece, and what the reader asks for while holding is
    /// never more than what it holds (plus `HOLD_MIN`).
    #[test]
    fn random_streams_and_reads_keep_the_invariants() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let max = 400 * 1024;
        for round in 0..40 {
            let mut stream = Vec::new();
            let mut large = Vec::new();
            for _ in 0..12 {
                let len = match next(4) {
                    0 => next(100),
                    1 => next(70_000),
                    2 => 60_000 + next(200_000),
                    _ => 300_000 + next(200_000),
                };
                let packet = publish(len);
                if packet.len() > HOLD_MIN && packet.len() <= max {
                    large.push((stream.len(), packet.len()));
                }
                stream.extend_from_slice(&packet);
            }
            let mut framer = Framer::new(max as u32);
            let (mut buf, mut pieces, mut at, mut held) = (BytesMut::new(), Vec::new(), 0, 0);
            while at < stream.len() {
                let ask = if held == 0 {
                    1 + next(20_000)
                } else {
                    let ask = hold_read_size(buf.len(), held);
                    assert!(ask <= buf.len().max(HOLD_MIN), "round {round}");
                    ask
                };
                let got = (1 + next(ask)).min(stream.len() - at);
                buf.extend_from_slice(&stream[at..at + got]);
                at += got;
                match framer.scan(&buf) {
                    Framing::All => {
                        held = 0;
                        pieces.push(buf.split().to_vec());
                    }
                    Framing::Hold { whole, total } => {
                        held = total;
                        if whole > 0 {
                            pieces.push(buf.split_to(whole).to_vec());
                        }
                    }
                }
            }
            pieces.push(buf.to_vec());
            assert_eq!(pieces.concat(), stream, "round {round}");
            let mut bounds = vec![0];
            for p in &pieces {
                bounds.push(bounds.last().unwrap() + p.len());
            }
            for (start, len) in large {
                assert!(
                    bounds
                        .windows(2)
                        .any(|w| w[0] <= start && start + len <= w[1]),
                    "round {round}: the packet at {start} ({len} bytes) was split"
                );
            }
        }
    }

    #[test]
    fn small_packets_split_across_reads_are_not_held() {
        let mut stream = Vec::new();
        for len in [10, 2000, 40_000, 5] {
            stream.extend_from_slice(&publish(len));
        }
        let pieces = read_through(&stream, 4096);
        assert_eq!(pieces.concat(), stream);
        // Handed over read by read (a partial header aside): nothing waits for a whole packet.
        assert!(pieces.len() >= stream.len() / 4096);
    }

    #[test]
    fn a_malformed_header_stops_framing_and_everything_is_handed_over() {
        let mut framer = Framer::default();
        // Packet type 0 is reserved.
        assert_eq!(framer.scan(&[0x00, 0x00]), Framing::All);
        let big = publish(200 * 1024);
        assert_eq!(framer.scan(&big[..1000]), Framing::All);
    }

    #[test]
    fn a_packet_over_the_maximum_size_is_not_gathered_mqtt_3_1_2_24() {
        // The core refuses it from its fixed header; the reader must not collect it first.
        let big = publish(200 * 1024);
        let mut framer = Framer::new(100 * 1024);
        assert_eq!(framer.scan(&big[..1000]), Framing::All);
        let mut framer = Framer::new(300 * 1024);
        assert_eq!(
            framer.scan(&big[..1000]),
            Framing::Hold {
                whole: 0,
                total: big.len()
            }
        );
    }

    #[test]
    fn the_read_size_grows_with_what_arrived_not_with_what_was_declared() {
        // A peer declares 256 MiB and sends 5 bytes: the next read asks for 64 KiB.
        assert_eq!(hold_read_size(5, 256 << 20), HOLD_MIN);
        assert_eq!(hold_read_size(1 << 20, 256 << 20), 1 << 20);
        assert_eq!(hold_read_size(900 * 1024, 1 << 20), 124 * 1024);
        assert_eq!(hold_read_size(1 << 20, 1 << 20), 0);
    }
}
