//! Machinery shared by the client's and the server's view of one connection: input buffering
//! and decoding, output encoding within the peer's Maximum Packet Size, the sticky fatal error,
//! packet identifiers, outbound QoS 1/2 flows under the peer's Receive Maximum, inbound QoS 1/2
//! flows under ours (exactly-once for QoS 2), and topic aliases both ways.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU16;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Packet, Publish, PublishAck};
use crate::error::{Error, ProtocolError, StateError};
use crate::topic::TopicName;
use crate::types::{PacketId, PacketType, ProtocolVersion, QoS, ReasonCode};

/// The tracing target on which every packet in and out is logged at DEBUG.
pub(crate) const TRACE_TARGET: &str = "mqttproto";

/// A multiplicative (Fx-style) hasher for integer keys the local side allocates (outbound packet
/// identifiers, session ids): SipHash's flooding resistance buys nothing there.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const ID_HASH_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(ID_HASH_K);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s.
pub(crate) type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// Which end of the connection this machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Transmits of at most this many bytes take the output buffer whole (see
/// [`Wire::poll_transmit`]).
const SMALL_TRANSMIT: usize = 64;

/// The output buffer doubles up to this size; past it, a full buffer is set aside as a chunk
/// and a new one started, instead of being copied into a larger one.
const MAX_OUTPUT_BUFFER: usize = 64 * 1024;

/// PUBLISH payloads of at least this many bytes are not copied into the output: they go out as
/// chunks of their own, the same `Bytes` for every subscriber. Smaller ones are cheaper to copy
/// than to reference, and a driver's queue of pending writes counts chunks (a bound of 1,024
/// writes and 8 MiB by default: at 16 KiB, the byte bound is reached first).
pub(crate) const SHARED_PAYLOAD_MIN: usize = 16 * 1024;

/// Byte-level state of one connection.
#[derive(Debug)]
pub(crate) struct Wire {
    pub role: Role,
    pub version: ProtocolVersion,
    input: BytesMut,
    /// Where packets are encoded.
    output: BytesMut,
    /// Output that comes before `output`: full buffers set aside, and shared payloads. Boxed,
    /// and let go once drained: only bursts and large payloads use it, and an empty queue
    /// would be 32 bytes in every idle connection.
    #[allow(clippy::box_collection)] // 8 bytes inline instead of 32
    chunks: Option<Box<VecDeque<Bytes>>>,
    /// Set once; every later input returns it. Boxed: rare, and 40 bytes inline in every
    /// connection otherwise.
    pub error: Option<Box<Error>>,
    /// The most we accept (our Maximum Packet Size).
    pub max_in: u32,
    /// The most the peer accepts (its Maximum Packet Size).
    pub max_out: u32,
    /// When we last wrote a packet.
    pub last_sent: Option<Instant>,
    /// When we last received a packet.
    pub last_received: Option<Instant>,
    /// Whether DISCONNECT was sent or the transport closed: nothing more is written.
    pub closed: bool,
}

impl Wire {
    pub fn new(role: Role, max_in: u32) -> Wire {
        Wire {
            role,
            version: ProtocolVersion::V5,
            input: BytesMut::new(),
            output: BytesMut::new(),
            chunks: None,
            error: None,
            max_in,
            max_out: u32::MAX,
            last_sent: None,
            last_received: None,
            closed: false,
        }
    }

    /// Clears per-connection state for a new network connection.
    pub fn reset(&mut self) {
        self.input.clear();
        self.output.clear();
        self.chunks = None;
        self.error = None;
        self.max_out = u32::MAX;
        self.last_sent = None;
        self.last_received = None;
        self.closed = false;
    }

    pub fn check(&self) -> Result<(), Error> {
        match &self.error {
            Some(e) => Err((**e).clone()),
            None => Ok(()),
        }
    }

    pub fn push_input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// Takes a read buffer: decoded in place when nothing is buffered (no copy), appended
    /// otherwise.
    pub fn push_input_owned(&mut self, data: BytesMut) {
        if self.input.is_empty() {
            self.input = data;
        } else {
            self.input.extend_from_slice(&data);
        }
    }

    /// The next complete packet in the input, if any. Errors are not yet sticky: the caller
    /// reports them through [`Wire::fail`].
    pub fn next_packet(&mut self, now: Instant) -> Result<Option<Packet>, Error> {
        match codec::decode(&mut self.input, self.version, self.max_in) {
            Ok(Some(p)) => {
                self.last_received = Some(now);
                tracing::debug!(target: TRACE_TARGET, role = self.role.name(), packet = ?p, "received");
                Ok(Some(p))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Error::Decode(e)),
        }
    }

    /// Encodes `packet` for the peer. Reason String and User Properties are dropped first if the
    /// packet would exceed the peer's Maximum Packet Size; if it still does, nothing is written.
    pub fn send(&mut self, now: Instant, mut packet: Packet) -> Result<(), StateError> {
        self.send_mut(now, &mut packet)
    }

    /// [`send`](Self::send) without taking the packet: the caller keeps it (possibly shrunk).
    pub fn send_mut(&mut self, now: Instant, packet: &mut Packet) -> Result<(), StateError> {
        if self.closed {
            return Err(StateError::NotConnected);
        }
        let mut size = packet.encoded_len(self.version);
        if size > self.max_out as usize {
            if !packet.shrink_to(self.max_out, self.version) {
                return Err(StateError::PacketTooLarge {
                    size: packet.encoded_len(self.version),
                    max: self.max_out,
                });
            }
            size = packet.encoded_len(self.version);
        }
        match packet {
            Packet::Publish(p) if p.payload.len() >= SHARED_PAYLOAD_MIN => {
                self.make_room(size - p.payload.len());
                p.encode_head(&mut self.output, self.version)?;
                let head = self.output.split().freeze();
                let chunks = self.chunks.get_or_insert_with(Default::default);
                chunks.push_back(head);
                chunks.push_back(p.payload.clone());
            }
            _ => {
                self.make_room(size);
                packet.encode(&mut self.output, self.version)?;
            }
        }
        tracing::debug!(target: TRACE_TARGET, role = self.role.name(), packet = ?packet, "sent");
        self.last_sent = Some(now);
        Ok(())
    }

    /// Sends a PUBLISH encoded once for several connections (see `session::SharedForm`):
    /// copied into the output, with `id` patched in at its offset; or, without an id and at
    /// [`SHARED_PAYLOAD_MIN`] bytes or more, sent as the same `Bytes`. It is not sent if it
    /// exceeds the peer's Maximum Packet Size (a PUBLISH has nothing it may drop to fit).
    pub fn send_encoded(
        &mut self,
        now: Instant,
        bytes: &Bytes,
        id: Option<(usize, PacketId)>,
    ) -> Result<(), StateError> {
        if self.closed {
            return Err(StateError::NotConnected);
        }
        if bytes.len() > self.max_out as usize {
            return Err(StateError::PacketTooLarge {
                size: bytes.len(),
                max: self.max_out,
            });
        }
        match id {
            None if bytes.len() >= SHARED_PAYLOAD_MIN => {
                let before = (!self.output.is_empty()).then(|| self.output.split().freeze());
                let chunks = self.chunks.get_or_insert_with(Default::default);
                chunks.extend(before);
                chunks.push_back(bytes.clone());
            }
            _ => {
                self.make_room(bytes.len());
                let start = self.output.len();
                self.output.extend_from_slice(bytes);
                if let Some((at, id)) = id {
                    let at = start + at;
                    if let Some(field) = self.output.get_mut(at..at + 2) {
                        field.copy_from_slice(&id.get().to_be_bytes());
                    }
                }
            }
        }
        tracing::debug!(target: TRACE_TARGET, role = self.role.name(), size = bytes.len(), packet_id = id.map(|(_, id)| id.get()), "sent PUBLISH (encoded once for all its subscribers)");
        self.last_sent = Some(now);
        Ok(())
    }

    /// Stops the connection with `error`. If `reason` is given, a DISCONNECT with that reason
    /// code is queued first (CONNACK-stage errors are answered by the caller instead).
    pub fn fail(&mut self, now: Instant, error: Error, reason: Option<ReasonCode>) -> Error {
        if self.error.is_none() {
            if let Some(rc) = reason {
                if !self.closed && rc.is_valid_for(PacketType::Disconnect) {
                    let _ = self.send(now, Packet::Disconnect(codec::Disconnect::new(rc)));
                }
            }
            tracing::debug!(target: TRACE_TARGET, role = self.role.name(), %error, "connection failed");
            self.error = Some(Box::new(error));
            self.closed = true;
        }
        self.error
            .as_deref()
            .cloned()
            .unwrap_or(Error::ConnectionClosed)
    }

    /// Makes room for `len` more bytes of output without copying what is there: a full
    /// buffer of [`MAX_OUTPUT_BUFFER`] or more is set aside as a chunk (the bytes of a burst
    /// for one connection are not copied again each time the buffer doubles).
    fn make_room(&mut self, len: usize) {
        let (used, capacity) = (self.output.len(), self.output.capacity());
        // Enough room; or nothing to set aside; or a small buffer, left to double (a copy of
        // at most 32 KiB): the encoder reserves.
        if capacity - used >= len || used == 0 || capacity < MAX_OUTPUT_BUFFER / 2 {
            return;
        }
        let next = MAX_OUTPUT_BUFFER.max(len);
        let full = std::mem::replace(&mut self.output, BytesMut::with_capacity(next));
        self.chunks
            .get_or_insert_with(Default::default)
            .push_back(full.freeze());
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(chunks) = &mut self.chunks {
            match chunks.pop_front() {
                Some(chunk) => return Some(chunk),
                None => self.chunks = None,
            }
        }
        if self.output.is_empty() {
            None
        } else if self.output.len() <= SMALL_TRANSMIT {
            // Acknowledgements, CONNACK, PINGRESP: hand the buffer over whole. Split, its tail
            // would keep the allocation (and a shared header) alive on an idle connection, to
            // save a small allocation on the next write.
            Some(std::mem::take(&mut self.output).freeze())
        } else {
            // Split: once the bytes handed out are written and dropped, the next packets
            // reuse the whole buffer.
            Some(self.output.split().freeze())
        }
    }

    /// Lets go of the input buffer if it holds nothing: a connection that goes quiet (after
    /// its CONNECT) should not keep its last read alive.
    pub fn release_empty_input(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
    }

    /// The buffered, not yet decoded input.
    pub fn input(&self) -> &[u8] {
        &self.input
    }
}

/// One outbound QoS 1/2 publish in flight.
#[derive(Debug, Clone)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum OutState {
    /// QoS 1 sent, awaiting PUBACK.
    AwaitPubAck(Publish),
    /// QoS 2 sent, awaiting PUBREC.
    AwaitPubRec(Publish),
    /// PUBREL sent, awaiting PUBCOMP.
    AwaitPubComp,
}

/// What an acknowledgement completed.
#[derive(Debug)]
pub(crate) enum AckOutcome {
    /// The flow ended: PUBACK, PUBCOMP, or PUBREC with an error code.
    Completed(PacketId, ReasonCode, codec::AckProperties),
    /// PUBREC with success: PUBREL is to be sent.
    Released(PacketId),
    /// The packet id awaits no such acknowledgement.
    Unknown,
}

/// One packet identifier of the [`Outbound`] window.
#[derive(Debug, Clone)]
enum IdSlot {
    Free,
    /// Allocated, not in flight: a queued publish, or a SUBSCRIBE/UNSUBSCRIBE.
    Held,
    /// In flight, with the order in which it was sent.
    InFlight(u64, OutState),
}

/// The number of packet identifiers (1 to 65,535).
const ID_SPACE: usize = u16::MAX as usize;

/// Outbound QoS 1/2 flows: packet identifiers, the in-flight window bounded by the peer's
/// Receive Maximum, and the messages waiting for room in it (in order).
///
/// Identifiers are handed out in sequence and acknowledged mostly in order, so they are kept in
/// a ring covering the contiguous range from the oldest one in use to the newest: allocating,
/// tracking and acknowledging are index operations, with no hashing. Every identifier outside
/// the ring is free. The ring is kept at most about twice as long as the number of identifiers
/// in use (plus 64): past that, holes left by acknowledgements out of order are reused instead
/// of extending the range, so one message that is never acknowledged cannot make it grow to the
/// whole identifier space.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// Slot `i` is identifier `base + i`, counted in 1..=65,535 with wrap-around.
    ring: VecDeque<IdSlot>,
    /// The identifier of `ring[0]`.
    base: u16,
    /// The identifier allocated last (where the next range starts when the ring empties).
    last: u16,
    /// Where the search for a hole inside the ring resumes.
    cursor: usize,
    /// Slots not `Free`.
    used: usize,
    /// Slots `InFlight`.
    inflight: usize,
    seq: u64,
    /// QoS 1/2 publishes with ids assigned, waiting for the window.
    pub waiting: VecDeque<Publish>,
    /// The peer's Receive Maximum.
    pub quota: u16,
}

/// The identifier `n` places after `id`, in 1..=65,535 with wrap-around.
fn id_after(id: u16, n: usize) -> u16 {
    // id is 1..=65,535 (or 0 for "before 1") and n at most 65,535: one subtraction at most.
    let v = usize::from(id) + n;
    (if v > ID_SPACE { v - ID_SPACE } else { v }) as u16
}

impl Outbound {
    pub fn new() -> Outbound {
        Outbound {
            quota: u16::MAX,
            ..Default::default()
        }
    }

    /// The ring index of `id`, if the ring covers it.
    fn index(&self, id: u16) -> Option<usize> {
        if id == 0 || self.ring.is_empty() {
            return None;
        }
        let (id, base) = (usize::from(id), usize::from(self.base));
        let i = if id >= base {
            id - base
        } else {
            id + ID_SPACE - base
        };
        (i < self.ring.len()).then_some(i)
    }

    fn slot(&self, id: PacketId) -> Option<&IdSlot> {
        self.ring.get(self.index(id.get())?)
    }

    /// Whether [`allocate`](Self::allocate) would find an identifier.
    pub fn has_free_id(&self) -> bool {
        self.used < ID_SPACE
    }

    /// A packet identifier not in use [MQTT-2.2.1-3, MQTT-2.2.1-4].
    pub fn allocate(&mut self) -> Result<PacketId, StateError> {
        if self.used >= ID_SPACE {
            return Err(StateError::NoPacketIdAvailable);
        }
        let id = if self.ring.is_empty() {
            self.base = id_after(self.last, 1);
            self.ring.push_back(IdSlot::Held);
            self.base
        } else if self.ring.len() < ID_SPACE && self.ring.len() < 2 * self.used + 64 {
            let id = id_after(self.base, self.ring.len());
            self.ring.push_back(IdSlot::Held);
            id
        } else {
            // The ring is sparse (or spans every identifier): reuse a hole. One exists, since
            // fewer than all its slots are used.
            let len = self.ring.len();
            let start = self.cursor % len;
            let Some(i) = (0..len)
                .map(|k| (start + k) % len)
                .find(|&i| matches!(self.ring[i], IdSlot::Free))
            else {
                return Err(StateError::NoPacketIdAvailable);
            };
            self.ring[i] = IdSlot::Held;
            self.cursor = i + 1;
            id_after(self.base, i)
        };
        self.used += 1;
        self.last = id;
        PacketId::new(id).ok_or(StateError::NoPacketIdAvailable)
    }

    /// Frees `id` (whatever it held).
    pub fn release(&mut self, id: PacketId) {
        let Some(i) = self.index(id.get()) else {
            return;
        };
        match self.ring[i] {
            IdSlot::Free => return,
            IdSlot::Held => {}
            IdSlot::InFlight(..) => self.inflight -= 1,
        }
        // Dropped in place: a slot is about 100 bytes.
        self.ring[i] = IdSlot::Free;
        self.used -= 1;
        // Let the ring shrink from both ends past freed slots.
        while matches!(self.ring.front(), Some(IdSlot::Free)) {
            self.ring.pop_front();
            self.base = id_after(self.base, 1);
            self.cursor = self.cursor.saturating_sub(1);
        }
        while matches!(self.ring.back(), Some(IdSlot::Free)) {
            self.ring.pop_back();
        }
        if self.ring.is_empty() {
            self.cursor = 0;
            if self.ring.capacity() > 4096 {
                // A large burst is over: an idle connection keeps no window of hundreds of
                // kilobytes. Smaller windows keep their room, or each burst would grow the ring
                // again from nothing.
                self.ring = VecDeque::new();
            }
        }
    }

    pub fn has_room(&self) -> bool {
        self.inflight < self.quota as usize
    }

    /// QoS 1/2 messages (and PUBRELs) in flight.
    pub fn inflight_len(&self) -> usize {
        self.inflight
    }

    /// Records a publish (with its id, allocated here) as sent.
    pub fn track(&mut self, publish: Publish) {
        let Some(id) = publish.packet_id else { return };
        let Some(i) = self.index(id.get()) else {
            debug_assert!(false, "tracking packet id {id} that was not allocated");
            return;
        };
        self.seq += 1;
        let state = match publish.qos {
            QoS::ExactlyOnce => OutState::AwaitPubRec(publish),
            _ => OutState::AwaitPubAck(publish),
        };
        match self.ring[i] {
            IdSlot::Free => {
                self.used += 1;
                self.inflight += 1;
            }
            IdSlot::Held => self.inflight += 1,
            IdSlot::InFlight(..) => {}
        }
        self.ring[i] = IdSlot::InFlight(self.seq, state);
    }

    /// Takes `id` out of the window; it stays allocated (its publish is to be sent again).
    pub fn untrack(&mut self, id: PacketId) {
        if let Some(i) = self.index(id.get()) {
            if let IdSlot::InFlight(..) = self.ring[i] {
                self.ring[i] = IdSlot::Held;
                self.inflight -= 1;
            }
        }
    }

    pub fn on_puback(&mut self, ack: PublishAck) -> AckOutcome {
        match self.slot(ack.packet_id) {
            Some(IdSlot::InFlight(_, OutState::AwaitPubAck(_))) => {
                self.release(ack.packet_id);
                AckOutcome::Completed(ack.packet_id, ack.reason_code, ack.properties)
            }
            _ => AckOutcome::Unknown,
        }
    }

    pub fn on_pubrec(&mut self, ack: PublishAck) -> AckOutcome {
        let id = ack.packet_id;
        let Some(i) = self.index(id.get()) else {
            return AckOutcome::Unknown;
        };
        match &mut self.ring[i] {
            IdSlot::InFlight(_, state @ OutState::AwaitPubRec(_)) => {
                if ack.reason_code.is_error() {
                    self.release(id);
                    AckOutcome::Completed(id, ack.reason_code, ack.properties)
                } else {
                    *state = OutState::AwaitPubComp;
                    AckOutcome::Released(id)
                }
            }
            // A PUBREC for a PUBREL already sent: send PUBREL again.
            IdSlot::InFlight(_, OutState::AwaitPubComp) => AckOutcome::Released(id),
            _ => AckOutcome::Unknown,
        }
    }

    pub fn on_pubcomp(&mut self, ack: PublishAck) -> AckOutcome {
        match self.slot(ack.packet_id) {
            Some(IdSlot::InFlight(_, OutState::AwaitPubComp)) => {
                self.release(ack.packet_id);
                AckOutcome::Completed(ack.packet_id, ack.reason_code, ack.properties)
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// In-flight entries in the order they were first sent, for retransmission on session
    /// resume [MQTT-4.4.0-1].
    pub fn in_order(&self) -> Vec<(PacketId, OutState)> {
        let mut v: Vec<_> = self
            .ring
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                IdSlot::InFlight(seq, st) => {
                    PacketId::new(id_after(self.base, i)).map(|id| (*seq, id, st.clone()))
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|(seq, _, _)| *seq);
        v.into_iter().map(|(_, id, st)| (id, st)).collect()
    }

    /// A resumed session's in-flight window may exceed the peer's new Receive Maximum
    /// [MQTT-3.3.4-7, MQTT-3.3.4-9]. The newest PUBLISHes not yet acknowledged leave the window,
    /// keep their packet ids, and wait at the front of `waiting` (with DUP, as they were sent
    /// before) for room. PUBRELs stay: they are not PUBLISHes, and their flows must complete.
    pub fn fit_quota(&mut self) {
        let mut order = self.in_order();
        while self.inflight > self.quota as usize {
            let Some(pos) = order
                .iter()
                .rposition(|(_, st)| !matches!(st, OutState::AwaitPubComp))
            else {
                break;
            };
            let (id, st) = order.remove(pos);
            self.untrack(id);
            if let OutState::AwaitPubAck(mut p) | OutState::AwaitPubRec(mut p) = st {
                p.dup = true;
                self.waiting.push_front(p);
            }
        }
    }

    /// Forgets everything (session state discarded).
    pub fn clear(&mut self) {
        self.ring = VecDeque::new();
        self.used = 0;
        self.inflight = 0;
        self.cursor = 0;
        self.waiting.clear();
    }
}

/// State of one inbound QoS 2 message on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InQos2 {
    /// Delivered to the application; PUBREC not yet sent (manual acknowledgement).
    Delivered,
    /// PUBREC sent; awaiting PUBREL.
    Recorded,
}

/// What to do with an inbound PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InboundVerdict {
    /// Deliver it to the application (first arrival).
    Deliver,
    /// A duplicate of a QoS 2 message already delivered: do not deliver again; answer PUBREC
    /// again if it was already sent.
    Duplicate { resend_pubrec: bool },
}

/// Inbound QoS 1/2 flows under our Receive Maximum, with exactly-once delivery for QoS 2.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    pub receive_maximum: u16,
    /// Refuse a PUBLISH past the Receive Maximum (0x93). When off, it is accepted and counted
    /// in `overruns`; the in-flight set stays bounded by the packet identifier space.
    pub strict: bool,
    /// PUBLISHes accepted past the Receive Maximum (when not strict), since construction.
    pub overruns: u64,
    /// QoS 1 delivered, PUBACK not yet sent (manual acknowledgement).
    pub qos1: HashSet<u16, IdBuildHasher>,
    /// QoS 2 messages between arrival and PUBCOMP. Kept across reconnects with the session.
    pub qos2: HashMap<u16, InQos2, IdBuildHasher>,
}

impl Inbound {
    pub fn new(receive_maximum: u16) -> Inbound {
        Inbound {
            receive_maximum,
            strict: true,
            ..Default::default()
        }
    }

    /// Checks the window before a new in-flight message is admitted.
    fn admit(&mut self) -> Result<(), ProtocolError> {
        if self.in_flight() < self.receive_maximum as usize {
            return Ok(());
        }
        if self.strict {
            return Err(ProtocolError::ReceiveMaximumExceeded(self.receive_maximum));
        }
        self.overruns += 1;
        if self.overruns == 1 || self.overruns.is_power_of_two() {
            tracing::warn!(
                target: "mqttproto",
                receive_maximum = self.receive_maximum,
                overruns = self.overruns,
                "the peer sent more QoS 1/2 messages than our Receive Maximum [MQTT-3.3.4-9]; \
                 accepted (strict_receive_maximum is off)"
            );
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.qos1.len() + self.qos2.len()
    }

    /// Checks a PUBLISH against the Receive Maximum and the QoS 2 state.
    pub fn on_publish(
        &mut self,
        qos: QoS,
        id: Option<PacketId>,
    ) -> Result<InboundVerdict, ProtocolError> {
        let Some(id) = id else {
            return Ok(InboundVerdict::Deliver);
        };
        match qos {
            QoS::AtMostOnce => Ok(InboundVerdict::Deliver),
            QoS::AtLeastOnce => {
                if !self.qos1.contains(&id.get()) {
                    self.admit()?;
                    self.qos1.insert(id.get());
                }
                Ok(InboundVerdict::Deliver)
            }
            QoS::ExactlyOnce => match self.qos2.get(&id.get()) {
                Some(state) => Ok(InboundVerdict::Duplicate {
                    resend_pubrec: *state == InQos2::Recorded,
                }),
                None => {
                    self.admit()?;
                    self.qos2.insert(id.get(), InQos2::Delivered);
                    Ok(InboundVerdict::Deliver)
                }
            },
        }
    }

    /// The application acknowledged a message: returns the acknowledgement to send.
    pub fn acknowledge(&mut self, id: PacketId, reason: ReasonCode) -> Option<Packet> {
        if self.qos1.remove(&id.get()) {
            return Some(Packet::PubAck(PublishAck::with_reason(id, reason)));
        }
        match self.qos2.get(&id.get()) {
            Some(InQos2::Delivered) => {
                if reason.is_error() {
                    // The flow ends with an error PUBREC (section 4.3.3).
                    self.qos2.remove(&id.get());
                } else {
                    self.qos2.insert(id.get(), InQos2::Recorded);
                }
                Some(Packet::PubRec(PublishAck::with_reason(id, reason)))
            }
            _ => None,
        }
    }

    /// A PUBREL arrived: PUBCOMP, with 0x92 when the id is unknown.
    pub fn on_pubrel(&mut self, id: PacketId) -> Packet {
        match self.qos2.get(&id.get()) {
            Some(InQos2::Recorded) => {
                self.qos2.remove(&id.get());
                Packet::PubComp(PublishAck::new(id))
            }
            _ => Packet::PubComp(PublishAck::with_reason(
                id,
                ReasonCode::PacketIdentifierNotFound,
            )),
        }
    }

    /// A new network connection: unacknowledged QoS 1 messages will be resent by the peer.
    pub fn reconnect(&mut self) {
        self.qos1.clear();
        // QoS 2 messages delivered but not yet acknowledged stay: the peer resends the PUBLISH
        // with DUP, which is recognised as a duplicate and answered once acknowledged.
    }

    pub fn clear(&mut self) {
        self.qos1.clear();
        self.qos2.clear();
    }
}

/// Topic aliases the peer set on this connection (inbound), checked against our maximum.
#[derive(Debug, Default)]
pub(crate) struct InboundAliases {
    pub maximum: u16,
    /// Boxed on first use: most clients set no alias, and an empty map is 32 bytes in every
    /// connection.
    #[allow(clippy::box_collection)] // 8 bytes inline instead of an empty map's 32-48
    map: Option<Box<HashMap<u16, TopicName, IdBuildHasher>>>,
}

impl InboundAliases {
    pub fn new(maximum: u16) -> Self {
        InboundAliases { maximum, map: None }
    }

    /// Resolves the topic of an inbound PUBLISH, recording a new mapping when it sets one.
    pub fn resolve(&mut self, publish: &mut Publish) -> Result<(), ProtocolError> {
        let Some(alias) = publish.properties.topic_alias else {
            return Ok(());
        };
        let a = alias.get();
        if a > self.maximum {
            return Err(ProtocolError::TopicAliasOutOfRange {
                alias: a,
                max: self.maximum,
            });
        }
        if publish.topic.is_empty() {
            match self.map.as_ref().and_then(|m| m.get(&a)) {
                Some(t) => publish.topic = t.clone(),
                None => return Err(ProtocolError::UnknownTopicAlias(a)),
            }
        } else {
            self.map
                .get_or_insert_with(Default::default)
                .insert(a, publish.topic.clone());
        }
        publish.properties.topic_alias = None;
        Ok(())
    }

    /// Aliases never carry over to another network connection [MQTT-3.3.2-7].
    pub fn clear(&mut self) {
        self.map = None;
    }
}

/// Topic aliases we set for the peer (outbound), up to the peer's maximum.
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    pub enabled: bool,
    pub maximum: u16,
    /// Boxed on first use (see [`InboundAliases`]).
    #[allow(clippy::box_collection)] // 8 bytes inline instead of an empty map's 32-48
    map: Option<Box<HashMap<TopicName, u16>>>,
}

impl OutboundAliases {
    pub fn new(enabled: bool) -> Self {
        OutboundAliases {
            enabled,
            ..Default::default()
        }
    }

    /// Whether [`apply`](Self::apply) may rewrite a PUBLISH.
    pub fn active(&self) -> bool {
        self.enabled && self.maximum != 0
    }

    /// Rewrites `publish` to use an alias: the first time a topic is sent it gets a new alias
    /// along with its name; later, only the alias. Once every alias is taken, names are sent.
    pub fn apply(&mut self, publish: &mut Publish) {
        if !self.enabled || self.maximum == 0 || publish.topic.is_empty() {
            return;
        }
        let map = self.map.get_or_insert_with(Default::default);
        if let Some(&a) = map.get(&publish.topic) {
            publish.topic = TopicName::empty();
            publish.properties.topic_alias = NonZeroU16::new(a);
        } else if map.len() < self.maximum as usize {
            let a = map.len() as u16 + 1;
            map.insert(publish.topic.clone(), a);
            publish.properties.topic_alias = NonZeroU16::new(a);
        }
    }

    /// Aliases never carry over to another network connection [MQTT-3.3.2-7].
    pub fn reset(&mut self, maximum: u16) {
        self.map = None;
        self.maximum = maximum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    #[test]
    fn packet_ids_are_never_reused_while_in_use_mqtt_2_2_1_3() {
        let mut o = Outbound::new();
        let a = o.allocate().unwrap();
        let b = o.allocate().unwrap();
        assert_ne!(a, b);
        // Exhaust the space: every id is handed out once.
        let mut seen = HashSet::new();
        seen.insert(a.get());
        seen.insert(b.get());
        while let Ok(id) = o.allocate() {
            assert!(seen.insert(id.get()), "id {id} reused");
        }
        assert_eq!(seen.len(), 65_535);
        assert_eq!(o.allocate(), Err(StateError::NoPacketIdAvailable));
        o.release(pid(42));
        assert_eq!(o.allocate().unwrap().get(), 42);
    }

    fn publish_with(id: PacketId, qos: QoS) -> Publish {
        let mut p = Publish::new(TopicName::try_from("t").unwrap(), Bytes::new());
        p.qos = qos;
        p.packet_id = Some(id);
        p
    }

    fn ack(id: PacketId) -> PublishAck {
        PublishAck::new(id)
    }

    fn drain(wire: &mut Wire) -> Vec<Bytes> {
        std::iter::from_fn(|| wire.poll_transmit()).collect()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // one Instant::now() as the fake clock's origin
    fn a_large_payload_is_sent_as_the_same_bytes_not_a_copy() {
        let mut wire = Wire::new(Role::Server, u32::MAX);
        let now = Instant::now();
        let payload = Bytes::from(vec![0xA5; SHARED_PAYLOAD_MIN]);
        let mut p = Publish::new(TopicName::try_from("big").unwrap(), payload.clone());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(7));
        wire.send(now, Packet::PingResp).unwrap();
        wire.send(now, Packet::Publish(p.clone())).unwrap();
        wire.send(now, Packet::PingResp).unwrap();
        let chunks = drain(&mut wire);
        // PINGRESP and the PUBLISH's head, the payload itself, PINGRESP.
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[1].as_ptr(),
            payload.as_ptr(),
            "the payload was copied"
        );
        let mut expected = BytesMut::new();
        for packet in [Packet::PingResp, Packet::Publish(p), Packet::PingResp] {
            packet.encode(&mut expected, ProtocolVersion::V5).unwrap();
        }
        assert_eq!(chunks.concat(), expected.to_vec());
        // A payload one byte smaller is copied into the output with its header.
        let mut small = Publish::new(
            TopicName::try_from("s").unwrap(),
            vec![1; SHARED_PAYLOAD_MIN - 1],
        );
        small.qos = QoS::AtMostOnce;
        wire.send(now, Packet::Publish(small)).unwrap();
        assert_eq!(drain(&mut wire).len(), 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // one Instant::now() as the fake clock's origin
    fn a_burst_is_set_aside_in_chunks_instead_of_copied_into_ever_larger_buffers() {
        let mut wire = Wire::new(Role::Server, u32::MAX);
        let now = Instant::now();
        let mut expected = BytesMut::new();
        for i in 0..5_000u32 {
            let mut p = Publish::new(
                TopicName::try_from("burst/topic").unwrap(),
                i.to_be_bytes().repeat(16),
            );
            p.qos = QoS::AtMostOnce;
            Packet::Publish(p.clone())
                .encode(&mut expected, ProtocolVersion::V5)
                .unwrap();
            wire.send(now, Packet::Publish(p)).unwrap();
        }
        let chunks = drain(&mut wire);
        assert!(chunks.len() > 1, "{} bytes in one buffer", expected.len());
        assert!(chunks.iter().all(|c| c.len() <= MAX_OUTPUT_BUFFER));
        assert_eq!(
            chunks.concat(),
            expected.to_vec(),
            "bytes out of order or lost"
        );
        assert!(wire.poll_transmit().is_none());
    }

    #[test]
    fn in_flight_window_follows_a_model_mqtt_2_2_1_3() {
        // Random allocations, sends, out-of-order acknowledgements and releases, checked
        // against a plain set: ids are unique while in use [MQTT-2.2.1-3], freed ids come back,
        // counts agree, and the ring stays within twice the ids in use plus 64.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut o = Outbound::new();
        let mut held: Vec<u16> = Vec::new();
        let mut flying: Vec<u16> = Vec::new();
        let mut in_use: HashSet<u16> = HashSet::new();
        let mut peak = 0;
        for step in 0..200_000u32 {
            // Phases: grow to about 3,000 in use, then drain, with one id never acknowledged.
            let grow = (step / 20_000) % 2 == 0;
            match next(10) {
                0..=4 if grow || in_use.len() < 10 => {
                    let id = o.allocate().unwrap();
                    assert!(in_use.insert(id.get()), "id {id} handed out twice");
                    if next(4) == 0 {
                        held.push(id.get());
                    } else {
                        o.track(publish_with(id, QoS::AtLeastOnce));
                        flying.push(id.get());
                    }
                }
                5..=7 if flying.len() > 1 => {
                    // Mostly the oldest, sometimes any; flying[0] is never acknowledged.
                    let k = if next(3) == 0 {
                        1 + next(flying.len() as u64 - 1) as usize
                    } else {
                        1
                    };
                    let id = flying.remove(k);
                    let outcome = o.on_puback(ack(pid(id)));
                    assert!(matches!(outcome, AckOutcome::Completed(..)));
                    assert!(matches!(o.on_puback(ack(pid(id))), AckOutcome::Unknown));
                    in_use.remove(&id);
                }
                8 if !held.is_empty() => {
                    let id = held.swap_remove(next(held.len() as u64) as usize);
                    o.release(pid(id));
                    in_use.remove(&id);
                }
                _ => {}
            }
            assert_eq!(o.inflight_len(), flying.len());
            assert_eq!(o.used, in_use.len());
            // The ring never spans more than twice the most ids ever in use (plus 64), though
            // flying[0] is never acknowledged and the ids wrap around several times.
            peak = peak.max(o.used);
            assert!(
                o.ring.len() <= 2 * peak + 65,
                "ring {} for {peak} in use",
                o.ring.len()
            );
        }
        let order: Vec<u16> = o.in_order().iter().map(|(id, _)| id.get()).collect();
        let mut sorted_flying = flying.clone();
        sorted_flying.sort_unstable();
        let mut sorted_order = order.clone();
        sorted_order.sort_unstable();
        assert_eq!(sorted_order, sorted_flying);
        assert_eq!(
            order[0], flying[0],
            "the oldest message is resent first [MQTT-4.4.0-1]"
        );
    }

    #[test]
    fn in_flight_window_wraps_around_the_id_space() {
        let mut o = Outbound::new();
        for expected in (1..=u16::MAX).chain(1..=10) {
            let id = o.allocate().unwrap();
            assert_eq!(id.get(), expected);
            o.track(publish_with(id, QoS::ExactlyOnce));
            // PUBREC, then PUBCOMP: the window is empty again each time.
            assert!(matches!(o.on_pubrec(ack(id)), AckOutcome::Released(_)));
            assert!(matches!(o.on_pubcomp(ack(id)), AckOutcome::Completed(..)));
            assert_eq!(o.inflight_len(), 0);
        }
        // An id in flight across the wrap keeps its place.
        let a = o.allocate().unwrap();
        o.track(publish_with(a, QoS::AtLeastOnce));
        assert!(matches!(
            o.on_puback(ack(pid(a.get().wrapping_sub(1).max(1)))),
            AckOutcome::Unknown
        ));
        assert!(matches!(o.on_puback(ack(a)), AckOutcome::Completed(..)));
    }

    #[test]
    fn fit_quota_moves_the_newest_publishes_back_to_waiting() {
        let mut o = Outbound::new();
        let ids: Vec<PacketId> = (0..5).map(|_| o.allocate().unwrap()).collect();
        for &id in &ids {
            o.track(publish_with(id, QoS::AtLeastOnce));
        }
        o.quota = 2;
        o.fit_quota();
        assert_eq!(o.inflight_len(), 2);
        let waiting: Vec<u16> = o
            .waiting
            .iter()
            .filter_map(|p| p.packet_id.map(|i| i.get()))
            .collect();
        assert_eq!(waiting, vec![ids[2].get(), ids[3].get(), ids[4].get()]);
        assert!(o.waiting.iter().all(|p| p.dup));
        // Their ids stay taken until they are sent and acknowledged.
        let fresh = o.allocate().unwrap();
        assert!(!ids.contains(&fresh));
    }

    #[test]
    fn qos2_duplicate_is_not_delivered_twice() {
        let mut i = Inbound::new(10);
        assert_eq!(
            i.on_publish(QoS::ExactlyOnce, Some(pid(1))).unwrap(),
            InboundVerdict::Deliver
        );
        assert_eq!(
            i.on_publish(QoS::ExactlyOnce, Some(pid(1))).unwrap(),
            InboundVerdict::Duplicate {
                resend_pubrec: false
            }
        );
        assert!(matches!(
            i.acknowledge(pid(1), ReasonCode::Success),
            Some(Packet::PubRec(_))
        ));
        assert_eq!(
            i.on_publish(QoS::ExactlyOnce, Some(pid(1))).unwrap(),
            InboundVerdict::Duplicate {
                resend_pubrec: true
            }
        );
        assert_eq!(
            i.on_pubrel(pid(1)),
            Packet::PubComp(PublishAck::new(pid(1)))
        );
        // After PUBCOMP the id is free again and a new message is delivered.
        assert_eq!(
            i.on_publish(QoS::ExactlyOnce, Some(pid(1))).unwrap(),
            InboundVerdict::Deliver
        );
    }

    #[test]
    fn inbound_receive_maximum() {
        let mut i = Inbound::new(2);
        i.on_publish(QoS::AtLeastOnce, Some(pid(1))).unwrap();
        i.on_publish(QoS::ExactlyOnce, Some(pid(2))).unwrap();
        assert_eq!(
            i.on_publish(QoS::AtLeastOnce, Some(pid(3))),
            Err(ProtocolError::ReceiveMaximumExceeded(2))
        );
        // QoS 0 is not counted.
        assert!(i.on_publish(QoS::AtMostOnce, None).is_ok());
    }

    #[test]
    fn inbound_lenient_receive_maximum_counts_overruns() {
        let mut i = Inbound::new(2);
        i.strict = false;
        i.on_publish(QoS::AtLeastOnce, Some(pid(1))).unwrap();
        i.on_publish(QoS::ExactlyOnce, Some(pid(2))).unwrap();
        assert_eq!(i.overruns, 0);
        assert_eq!(
            i.on_publish(QoS::AtLeastOnce, Some(pid(3))),
            Ok(InboundVerdict::Deliver)
        );
        assert_eq!(
            i.on_publish(QoS::ExactlyOnce, Some(pid(4))),
            Ok(InboundVerdict::Deliver)
        );
        assert_eq!(i.overruns, 2);
        // Every admitted message is still tracked and acknowledged once.
        assert!(i.acknowledge(pid(3), ReasonCode::Success).is_some());
        assert!(i.acknowledge(pid(3), ReasonCode::Success).is_none());
        // A resent copy of a tracked message is not an overrun.
        i.on_publish(QoS::AtLeastOnce, Some(pid(1))).unwrap();
        assert_eq!(i.overruns, 2);
    }
}
