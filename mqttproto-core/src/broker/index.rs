//! The subscription index: a topic trie from topic filters to subscribers (sections 4.7 and 4.8).
//!
//! [`SubscriptionIndex`] stores one value `V` per (topic filter, subscriber key `K`) and answers
//! "who is subscribed to this topic name?" in time proportional to the depth of the topic and the
//! number of matching subscriptions, never to the number of subscriptions in the index.
//!
//! # Shape
//!
//! Each trie node stands for a sequence of filter levels. A node has
//!
//! - a map of *literal* children keyed by the level's bytes,
//! - a dedicated `+` child,
//! - the subscriptions whose filter *ends* at this node (`a/b` ends at node `a/b`),
//! - the subscriptions whose filter ends with `#` below this node (`a/b/#` is stored at node
//!   `a/b`; `#` alone at the root).
//!
//! Matching a topic walks the trie level by level: at each node it follows the literal child named
//! by the topic's level and the `+` child, and reports the node's `#` subscriptions on the way (a
//! multi-level wildcard also matches the parent level: `a/#` matches `a`). When the topic's levels
//! run out, the node's exact subscriptions are reported. The walk never descends into a `+` child
//! or reports a `#` at the root when the topic starts with `$` [MQTT-4.7.2-1]. No normalisation is
//! applied to levels [MQTT-4.7.3-4].
//!
//! The walk, insertion, removal and dropping are iterative: a topic of 65,535 `/` characters or a
//! filter of 32,768 `+` levels cannot overflow the stack. Matching does not allocate unless the
//! topic is deeper than 32 levels *and* the trie has nodes that deep on the matching path.
//!
//! # Shared subscriptions
//!
//! A shared subscription `$share/{ShareName}/{filter}` is stored at the node of `{filter}`, in a
//! group identified by the ShareName (a shared subscription is identified by ShareName and filter
//! together). Matching yields each matching group once, as a [`SharedGroup`], instead of its members;
//! the broker chooses one member per message, for example with the group's round-robin cursor
//! ([`SharedGroup::next_member`], [`SharedGroup::next_member_where`]).
//!
//! # Example
//!
//! ```
//! use mqttproto_core::broker::index::{Match, SubscriptionIndex};
//! use mqttproto_core::{QoS, TopicFilter, TopicName};
//!
//! let mut index: SubscriptionIndex<u32, QoS> = SubscriptionIndex::new();
//! let filter = |s: &str| TopicFilter::try_from(s).unwrap();
//! index.insert(&filter("sport/tennis/+"), 1, QoS::AtLeastOnce);
//! index.insert(&filter("sport/#"), 1, QoS::AtMostOnce);
//! index.insert(&filter("$share/workers/sport/#"), 2, QoS::AtLeastOnce);
//! index.insert(&filter("$share/workers/sport/#"), 3, QoS::AtLeastOnce);
//!
//! let topic = TopicName::try_from("sport/tennis/player1").unwrap();
//! let mut direct = Vec::new();
//! let mut shared = Vec::new();
//! index.matches(&topic, |m| match m {
//!     // Client 1 has two overlapping subscriptions: both are reported and the broker merges them.
//!     Match::Subscription { key, value } => direct.push((key, *value)),
//!     // One member of the group receives the message; the cursor moves on.
//!     Match::Shared(group) => shared.extend(group.next_member().map(|(key, _)| key)),
//! });
//! direct.sort();
//! assert_eq!(direct, [(1, QoS::AtMostOnce), (1, QoS::AtLeastOnce)]);
//! assert_eq!(shared, [2]);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::topic::{TopicFilter, TopicName};

/// Byte offset meaning "no level left".
pub(crate) const END: usize = usize::MAX;

/// Splits off the level of `bytes` that starts at byte `pos`.
///
/// Returns the level and the offset of the next level, or [`END`] if this was the last one.
#[inline]
pub(crate) fn next_level(bytes: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = bytes.get(pos..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
        None => (rest, END),
    }
}

/// A LIFO stack that keeps its first `N` entries inline and spills to the heap beyond that, so
/// that walking a trie of ordinary depth does not allocate and walking a very deep one does not
/// recurse.
pub(crate) struct DfsStack<T, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    /// Used only while `inline` is full.
    spill: Vec<T>,
}

impl<T, const N: usize> DfsStack<T, N> {
    pub(crate) fn new() -> Self {
        DfsStack {
            inline: std::array::from_fn(|_| None),
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            None => self.spill.push(item),
        }
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len).and_then(Option::take)
    }
}

/// The subscriptions whose filter ends at one place of the trie.
struct Subscribers<K, V> {
    /// Non-shared subscriptions, sorted by key: one per key [MQTT-3.8.4-3].
    direct: Vec<(K, V)>,
    /// Shared subscription groups, in creation order.
    groups: Vec<Group<K, V>>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers {
            direct: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

/// One shared subscription group: a ShareName at one filter.
struct Group<K, V> {
    name: Box<str>,
    /// Members in subscription order; one entry per key.
    members: Vec<(K, V)>,
    /// Index of the member the next round-robin pick starts at (taken modulo the length).
    ///
    /// Atomic so that a pick can advance it through the shared reference handed out by
    /// [`SubscriptionIndex::matches`]; the index stays `Sync`. Relaxed ordering: the cursor only
    /// spreads load, it guards no other memory.
    cursor: AtomicUsize,
}

/// Literal children by level. Boxed behind an `Option` so that a leaf costs one word for it.
type Literals<K, V> = HashMap<Box<[u8]>, Node<K, V>>;

/// One trie node: a sequence of filter levels.
struct Node<K, V> {
    /// Children for literal levels (including the empty level).
    literal: Option<Box<Literals<K, V>>>,
    /// The child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter is this node's levels followed by `#`.
    multi: Option<Box<Subscribers<K, V>>>,
    /// Subscriptions whose filter is exactly this node's levels.
    exact: Option<Box<Subscribers<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            literal: None,
            plus: None,
            multi: None,
            exact: None,
        }
    }
}

impl<K, V> Node<K, V> {
    fn child(&self, level: &[u8]) -> Option<&Node<K, V>> {
        if level == b"+" {
            self.plus.as_deref()
        } else {
            self.literal.as_ref()?.get(level)
        }
    }

    fn child_mut(&mut self, level: &[u8]) -> Option<&mut Node<K, V>> {
        if level == b"+" {
            self.plus.as_deref_mut()
        } else {
            self.literal.as_mut()?.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &[u8]) -> &mut Node<K, V> {
        if level == b"+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.literal
                .get_or_insert_with(Box::default)
                .entry(Box::from(level))
                .or_default()
        }
    }

    /// Detaches the child for `level`; dropping it drops its whole subtree.
    fn remove_child(&mut self, level: &[u8]) {
        if level == b"+" {
            self.plus = None;
        } else if let Some(map) = &mut self.literal {
            map.remove(level);
            if map.is_empty() {
                self.literal = None;
            }
        }
    }

    fn child_count(&self) -> usize {
        self.literal.as_ref().map_or(0, |m| m.len()) + usize::from(self.plus.is_some())
    }

    fn is_empty(&self) -> bool {
        self.literal.is_none()
            && self.plus.is_none()
            && self.multi.is_none()
            && self.exact.is_none()
    }

    fn subscribers(&self, multi: bool) -> Option<&Subscribers<K, V>> {
        if multi {
            self.multi.as_deref()
        } else {
            self.exact.as_deref()
        }
    }

    fn subscribers_slot(&mut self, multi: bool) -> &mut Option<Box<Subscribers<K, V>>> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }

    /// Moves the children of `self` onto `out`.
    fn detach_children(&mut self, out: &mut Vec<Node<K, V>>) {
        if let Some(map) = self.literal.take() {
            out.extend(map.into_values());
        }
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Drops the subtree iteratively: a trie as deep as the longest filter must not overflow the
    /// stack through recursive drop glue.
    fn drop(&mut self) {
        if self.literal.is_none() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.detach_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.detach_children(&mut pending);
            // `node` now has no children; dropping it recurses no further.
        }
    }
}

/// The trie path of a filter: its levels up to (not including) a trailing `#`, and whether it
/// ended with `#`.
struct FilterPath<'a> {
    /// `None` for the filter `#` alone (no levels before the wildcard).
    levels: Option<&'a [u8]>,
    multi: bool,
}

impl<'a> FilterPath<'a> {
    fn new(filter: &'a [u8]) -> Self {
        if filter == b"#" {
            FilterPath {
                levels: None,
                multi: true,
            }
        } else if let Some(prefix) = filter.strip_suffix(b"/#") {
            FilterPath {
                levels: Some(prefix),
                multi: true,
            }
        } else {
            FilterPath {
                levels: Some(filter),
                multi: false,
            }
        }
    }

    fn levels(&self) -> impl Iterator<Item = &'a [u8]> {
        self.levels
            .into_iter()
            .flat_map(|l| l.split(|&b| b == b'/'))
    }
}

/// One result of [`SubscriptionIndex::matches`].
pub enum Match<'a, K, V> {
    /// A non-shared subscription of `key` whose filter matches the topic.
    ///
    /// A subscriber with several overlapping subscriptions is reported once per subscription; the
    /// broker delivers one message with the maximum QoS of them [MQTT-3.3.4-2] and all their
    /// Subscription Identifiers [MQTT-3.3.4-3].
    Subscription {
        /// The subscriber.
        key: K,
        /// The data stored with this subscription.
        value: &'a V,
    },
    /// A shared subscription group whose filter matches the topic; reported once per message. The
    /// broker delivers the message to one of its members.
    Shared(SharedGroup<'a, K, V>),
}

impl<K: Copy, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: Copy, V> Copy for Match<'_, K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Match<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Subscription { key, value } => f
                .debug_struct("Subscription")
                .field("key", key)
                .field("value", value)
                .finish(),
            Match::Shared(group) => f.debug_tuple("Shared").field(group).finish(),
        }
    }
}

/// A shared subscription group: the members of one ShareName subscribed to one filter.
///
/// Members are kept in subscription order; re-subscribing replaces a member's value in place. The
/// group carries a round-robin cursor: [`next_member`](Self::next_member) returns the member at the
/// cursor and moves the cursor past it, so successive messages go to successive members. The
/// cursor can be advanced through a shared reference (it is an atomic counter); removing a member
/// keeps the rotation in step.
pub struct SharedGroup<'a, K, V> {
    group: &'a Group<K, V>,
}

impl<K, V> Clone for SharedGroup<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for SharedGroup<'_, K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedGroup<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.group.name)
            .field("members", &self.group.members)
            .field("cursor", &self.group.cursor.load(Ordering::Relaxed))
            .finish()
    }
}

impl<'a, K: Copy, V> SharedGroup<'a, K, V> {
    /// The ShareName.
    pub fn name(&self) -> &'a str {
        &self.group.name
    }

    /// The members and their subscription data, in subscription order. Never empty.
    pub fn members(&self) -> &'a [(K, V)] {
        &self.group.members
    }

    /// The member the round-robin cursor points at; the cursor moves to the next member.
    pub fn next_member(&self) -> Option<(K, &'a V)> {
        self.next_member_where(|_, _| true)
    }

    /// The first member, starting at the round-robin cursor and wrapping around, for which
    /// `eligible` returns true (for example: connected, or with room in its receive window); the
    /// cursor moves past it. `None`, with the cursor unchanged, if no member is eligible.
    pub fn next_member_where(&self, mut eligible: impl FnMut(K, &V) -> bool) -> Option<(K, &'a V)> {
        let members: &'a [(K, V)] = &self.group.members;
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.group.cursor.load(Ordering::Relaxed) % n;
        // Members from the cursor to the end, then from the start up to the cursor.
        let (before, from_cursor) = members.split_at(start);
        let (i, (key, value)) = from_cursor
            .iter()
            .enumerate()
            .map(|(i, m)| (start + i, m))
            .chain(before.iter().enumerate())
            .find(|(_, (key, value))| eligible(*key, value))?;
        self.group.cursor.store(i + 1, Ordering::Relaxed);
        Some((*key, value))
    }
}

/// A topic trie from topic filters to subscriptions: one `V` per (filter, subscriber `K`).
///
/// See the [module documentation](self) for the shape and the costs. `K` is a small copyable key
/// such as a session id; `V` is the subscription's data, such as its options and subscription
/// identifier.
pub struct SubscriptionIndex<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K, V> fmt::Debug for SubscriptionIndex<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Ord, V> SubscriptionIndex<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of subscriptions: (filter, key) pairs, each member of a shared group counted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter` with `value`.
    ///
    /// If `key` already has a subscription to this exact filter (for a shared filter: the same
    /// ShareName and filter), its value is replaced and the old one returned [MQTT-3.8.4-3]; a
    /// replaced shared-group member keeps its place in the rotation. `None` means the
    /// subscription is new (what Retain Handling 1 needs to know [MQTT-3.3.1-10]).
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let path = FilterPath::new(filter.filter_bytes());
        let share_name = filter.share_name();
        // Fast path: the node exists already (no key allocation).
        if let Some(node) = Self::node_mut(&mut self.root, &path) {
            let subs = node
                .subscribers_slot(path.multi)
                .get_or_insert_with(Box::default);
            let old = Self::insert_into(subs, share_name, key, value);
            if old.is_none() {
                self.len += 1;
            }
            return old;
        }
        let mut node = &mut self.root;
        for level in path.levels() {
            node = node.child_or_insert(level);
        }
        let subs = node
            .subscribers_slot(path.multi)
            .get_or_insert_with(Box::default);
        let old = Self::insert_into(subs, share_name, key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn insert_into(
        subs: &mut Subscribers<K, V>,
        share_name: Option<&str>,
        key: K,
        value: V,
    ) -> Option<V> {
        let Some(name) = share_name else {
            return match subs.direct.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => subs
                    .direct
                    .get_mut(i)
                    .map(|(_, v)| std::mem::replace(v, value)),
                Err(i) => {
                    subs.direct.insert(i, (key, value));
                    None
                }
            };
        };
        match subs.groups.iter_mut().find(|g| &*g.name == name) {
            Some(group) => match group.members.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => Some(std::mem::replace(v, value)),
                None => {
                    group.members.push((key, value));
                    None
                }
            },
            None => {
                subs.groups.push(Group {
                    name: Box::from(name),
                    members: vec![(key, value)],
                    cursor: AtomicUsize::new(0),
                });
                None
            }
        }
    }

    fn node<'n>(root: &'n Node<K, V>, path: &FilterPath<'_>) -> Option<&'n Node<K, V>> {
        let mut node = root;
        for level in path.levels() {
            node = node.child(level)?;
        }
        Some(node)
    }

    fn node_mut<'n>(root: &'n mut Node<K, V>, path: &FilterPath<'_>) -> Option<&'n mut Node<K, V>> {
        let mut node = root;
        for level in path.levels() {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    /// The value of `key`'s subscription to `filter`, if any.
    pub fn get(&self, filter: &TopicFilter, key: K) -> Option<&V> {
        let path = FilterPath::new(filter.filter_bytes());
        let subs = Self::node(&self.root, &path)?.subscribers(path.multi)?;
        match filter.share_name() {
            None => subs
                .direct
                .binary_search_by(|(k, _)| k.cmp(&key))
                .ok()
                .and_then(|i| subs.direct.get(i))
                .map(|(_, v)| v),
            Some(name) => subs
                .groups
                .iter()
                .find(|g| &*g.name == name)?
                .members
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v),
        }
    }

    /// The shared subscription group of a shared `filter` (`$share/{ShareName}/…`), if it has
    /// members. `None` for a non-shared filter.
    pub fn shared_group(&self, filter: &TopicFilter) -> Option<SharedGroup<'_, K, V>> {
        let name = filter.share_name()?;
        let path = FilterPath::new(filter.filter_bytes());
        let subs = Self::node(&self.root, &path)?.subscribers(path.multi)?;
        let group = subs.groups.iter().find(|g| &*g.name == name)?;
        Some(SharedGroup { group })
    }

    /// Removes `key`'s subscription to `filter` and returns its value.
    ///
    /// Trie nodes left without subscriptions or children are freed, so the index's memory follows
    /// the subscriptions it holds. When the last member of a shared group leaves, the group goes.
    pub fn remove(&mut self, filter: &TopicFilter, key: K) -> Option<V> {
        let path = FilterPath::new(filter.filter_bytes());
        let node = Self::node_mut(&mut self.root, &path)?;
        let slot = node.subscribers_slot(path.multi);
        let subs = slot.as_deref_mut()?;
        let old = match filter.share_name() {
            None => {
                let i = subs.direct.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
                subs.direct.remove(i).1
            }
            Some(name) => {
                let g = subs.groups.iter().position(|g| &*g.name == name)?;
                let group = subs.groups.get_mut(g)?;
                let i = group.members.iter().position(|(k, _)| *k == key)?;
                let (_, old) = group.members.remove(i);
                let cursor = group.cursor.get_mut();
                if *cursor > i {
                    // Keep pointing at the same next member.
                    *cursor -= 1;
                }
                if group.members.is_empty() {
                    subs.groups.remove(g);
                }
                old
            }
        };
        if subs.is_empty() {
            *slot = None;
        }
        self.len -= 1;
        if node.is_empty() {
            self.prune(&path);
        }
        Some(old)
    }

    /// Frees the chain of nodes ending at `path`'s (now empty) node.
    fn prune(&mut self, path: &FilterPath<'_>) {
        // Find the shallowest node from which the path holds nothing but the chain leading to the
        // empty last node; detach it from its parent.
        let mut node = &self.root;
        let mut cut: Option<usize> = None;
        for (depth, level) in path.levels().enumerate() {
            let Some(child) = node.child(level) else {
                return;
            };
            let chain_only =
                child.multi.is_none() && child.exact.is_none() && child.child_count() <= 1;
            if !chain_only {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
            node = child;
        }
        if !node.is_empty() {
            return;
        }
        let Some(cut) = cut else {
            return;
        };
        let mut node = &mut self.root;
        for (depth, level) in path.levels().enumerate() {
            if depth == cut {
                node.remove_child(level);
                return;
            }
            node = match node.child_mut(level) {
                Some(child) => child,
                None => return,
            };
        }
    }

    /// Calls `f` for every subscription matching `topic`: each non-shared subscription as
    /// [`Match::Subscription`] (all of them, also several of one key), each shared group once as
    /// [`Match::Shared`].
    ///
    /// Filters starting with a wildcard do not match topics starting with `$` [MQTT-4.7.2-1]; `#`
    /// also matches the parent level; `+` matches an empty level. The order of the calls is
    /// deterministic (a function of the index's contents and the topic) but otherwise unspecified.
    /// The empty topic name (a PUBLISH naming its topic by alias) matches nothing: resolve the
    /// alias first.
    ///
    /// Cost: one hash lookup per visited node, where the visited nodes are those whose filter
    /// prefix matches the topic's leading levels, plus one call per match. No allocation unless
    /// the walk goes deeper than 32 levels.
    pub fn matches<'a>(&'a self, topic: &TopicName, mut f: impl FnMut(Match<'a, K, V>)) {
        let t = topic.as_bytes();
        if t.is_empty() {
            return;
        }
        let dollar = t.first() == Some(&b'$');
        let mut stack: DfsStack<(&'a Node<K, V>, usize), 32> = DfsStack::new();
        stack.push((&self.root, 0));
        while let Some((node, pos)) = stack.pop() {
            // Only the root is visited at position 0; later levels start after a '/'.
            let wildcards_allowed = !(dollar && pos == 0);
            if wildcards_allowed {
                if let Some(subs) = node.multi.as_deref() {
                    Self::report(subs, &mut f);
                }
            }
            if pos == END {
                if let Some(subs) = node.exact.as_deref() {
                    Self::report(subs, &mut f);
                }
                continue;
            }
            let (level, next) = next_level(t, pos);
            if wildcards_allowed {
                if let Some(plus) = node.plus.as_deref() {
                    stack.push((plus, next));
                }
            }
            if let Some(child) = node.literal.as_ref().and_then(|m| m.get(level)) {
                stack.push((child, next));
            }
        }
    }

    #[inline]
    fn report<'a>(subs: &'a Subscribers<K, V>, f: &mut impl FnMut(Match<'a, K, V>)) {
        for (key, value) in &subs.direct {
            f(Match::Subscription { key: *key, value });
        }
        for group in &subs.groups {
            f(Match::Shared(SharedGroup { group }));
        }
    }

    /// The number of trie nodes below the root (memory diagnostics and tests).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(map) = node.literal.as_deref() {
                count += map.len();
                stack.extend(map.values());
            }
            if let Some(plus) = node.plus.as_deref() {
                count += 1;
                stack.push(plus);
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::filter_matches;

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }
    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    /// The non-shared matches as sorted (key, value) pairs, and the shared groups as sorted
    /// (name, member keys).
    #[allow(clippy::type_complexity)]
    fn collect(
        index: &SubscriptionIndex<u32, u32>,
        topic: &str,
    ) -> (Vec<(u32, u32)>, Vec<(String, Vec<u32>)>) {
        let mut direct = Vec::new();
        let mut shared = Vec::new();
        index.matches(&name(topic), |m| match m {
            Match::Subscription { key, value } => direct.push((key, *value)),
            Match::Shared(g) => shared.push((
                g.name().to_owned(),
                g.members().iter().map(|(k, _)| *k).collect(),
            )),
        });
        direct.sort();
        shared.sort();
        (direct, shared)
    }

    fn keys(index: &SubscriptionIndex<u32, u32>, topic: &str) -> Vec<u32> {
        collect(index, topic)
            .0
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn spec_examples_section_4_7_mqtt_4_7_1_1_and_4_7_1_2() {
        // Section 4.7.1.2 and 4.7.1.3 examples, one subscriber per filter.
        let filters = [
            "sport/tennis/player1/#", // 0
            "sport/#",                // 1
            "#",                      // 2
            "sport/tennis/+",         // 3
            "sport/+",                // 4
            "+/+",                    // 5
            "/+",                     // 6
            "+",                      // 7
            "sport/tennis/#",         // 8
        ];
        let mut index = SubscriptionIndex::new();
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(index.insert(&filter(f), i as u32, 0), None);
        }
        assert_eq!(index.len(), filters.len());
        assert_eq!(keys(&index, "sport/tennis/player1"), [0, 1, 2, 3, 8]);
        assert_eq!(keys(&index, "sport/tennis/player1/ranking"), [0, 1, 2, 8]);
        assert_eq!(
            keys(&index, "sport/tennis/player1/score/wimbledon"),
            [0, 1, 2, 8]
        );
        // "sport/#" matches "sport" (the parent level); "sport/+" does not.
        assert_eq!(keys(&index, "sport"), [1, 2, 7]);
        // "sport/+" matches "sport/" (an empty level).
        assert_eq!(keys(&index, "sport/"), [1, 2, 4, 5]);
        // "+/+" and "/+" match "/finance"; "+" does not.
        assert_eq!(keys(&index, "/finance"), [2, 5, 6]);
        assert_eq!(keys(&index, "/"), [2, 5, 6]);
        assert_eq!(keys(&index, "x/y/z"), [2]);
    }

    #[test]
    fn no_normalisation_mqtt_4_7_3_4() {
        let mut index = SubscriptionIndex::new();
        index.insert(&filter("a/b"), 1, 0);
        index.insert(&filter("a//b"), 2, 0);
        index.insert(&filter("a/b/"), 3, 0);
        assert_eq!(keys(&index, "a/b"), [1]);
        assert_eq!(keys(&index, "a//b"), [2]);
        assert_eq!(keys(&index, "a/b/"), [3]);
        assert_eq!(keys(&index, "A/b"), Vec::<u32>::new());
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
        let mut index = SubscriptionIndex::new();
        index.insert(&filter("#"), 1, 0);
        index.insert(&filter("+/monitor/Clients"), 2, 0);
        index.insert(&filter("$SYS/#"), 3, 0);
        index.insert(&filter("$SYS/monitor/+"), 4, 0);
        index.insert(&filter("+/#"), 5, 0);
        index.insert(&filter("$share/g/#"), 6, 0);
        index.insert(&filter("$share/g/$SYS/#"), 7, 0);
        assert_eq!(keys(&index, "$SYS/monitor/Clients"), [3, 4]);
        let (_, shared) = collect(&index, "$SYS/monitor/Clients");
        assert_eq!(shared, [("g".to_owned(), vec![7])]);
        // The same filters match a topic without '$', and '$' later in a topic is ordinary.
        assert_eq!(keys(&index, "SYS/monitor/Clients"), [1, 2, 5]);
        assert_eq!(keys(&index, "a/$SYS"), [1, 5]);
        let (_, shared) = collect(&index, "a/$SYS");
        assert_eq!(shared, [("g".to_owned(), vec![6])]);
    }

    #[test]
    fn overlapping_subscriptions_all_reported_mqtt_3_3_4_2_and_3_3_4_3() {
        let mut index = SubscriptionIndex::new();
        index.insert(&filter("a/b"), 1, 10);
        index.insert(&filter("a/+"), 1, 11);
        index.insert(&filter("a/#"), 1, 12);
        index.insert(&filter("#"), 1, 13);
        index.insert(&filter("a/#"), 2, 20);
        let (direct, shared) = collect(&index, "a/b");
        assert_eq!(direct, [(1, 10), (1, 11), (1, 12), (1, 13), (2, 20)]);
        assert!(shared.is_empty());
    }

    #[test]
    fn same_filter_replaces_subscription_mqtt_3_8_4_3() {
        let mut index = SubscriptionIndex::new();
        assert_eq!(index.insert(&filter("a/+"), 1, 1), None);
        assert_eq!(index.insert(&filter("a/+"), 1, 2), Some(1));
        assert_eq!(index.len(), 1);
        assert_eq!(index.get(&filter("a/+"), 1), Some(&2));
        assert_eq!(collect(&index, "a/x").0, [(1, 2)]);
        // A different key or a different filter is another subscription.
        assert_eq!(index.insert(&filter("a/+"), 2, 3), None);
        assert_eq!(index.insert(&filter("a/#"), 1, 4), None);
        assert_eq!(index.len(), 3);
        // A shared filter with the same topic filter is another subscription too.
        assert_eq!(index.insert(&filter("$share/g/a/+"), 1, 5), None);
        assert_eq!(index.insert(&filter("$share/g/a/+"), 1, 6), Some(5));
        assert_eq!(index.get(&filter("$share/g/a/+"), 1), Some(&6));
        assert_eq!(index.get(&filter("$share/h/a/+"), 1), None);
        assert_eq!(index.get(&filter("a/+"), 1), Some(&2));
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn shared_groups_reported_once_with_round_robin_mqtt_4_8_2_1() {
        let mut index = SubscriptionIndex::new();
        for key in [3, 1, 2] {
            index.insert(&filter("$share/workers/jobs/+"), key, key * 10);
        }
        index.insert(&filter("$share/other/jobs/+"), 9, 90);
        index.insert(&filter("$share/workers/jobs/#"), 4, 40);
        index.insert(&filter("jobs/+"), 5, 50);

        let (direct, shared) = collect(&index, "jobs/1");
        assert_eq!(direct, [(5, 50)]);
        // Each group once, members in subscription order; "workers" at two filters is two groups.
        assert_eq!(
            shared,
            [
                ("other".to_owned(), vec![9]),
                ("workers".to_owned(), vec![3, 1, 2]),
                ("workers".to_owned(), vec![4]),
            ]
        );

        let group = index
            .shared_group(&filter("$share/workers/jobs/+"))
            .unwrap();
        assert_eq!(group.name(), "workers");
        let picks: Vec<u32> = (0..7)
            .filter_map(|_| group.next_member())
            .map(|m| m.0)
            .collect();
        assert_eq!(picks, [3, 1, 2, 3, 1, 2, 3]);
        // Skip ineligible members, e.g. disconnected ones.
        assert_eq!(group.next_member_where(|k, _| k != 1), Some((2, &20)));
        assert_eq!(group.next_member_where(|_, _| false), None);
        assert_eq!(group.next_member().map(|m| m.0), Some(3));

        // Picking through `matches` advances the same cursor.
        let mut picked = Vec::new();
        for _ in 0..3 {
            index.matches(&name("jobs/x"), |m| {
                if let Match::Shared(g) = m {
                    if g.name() == "workers" && g.members().len() == 3 {
                        picked.extend(g.next_member().map(|m| m.0));
                    }
                }
            });
        }
        assert_eq!(picked, [1, 2, 3]);

        // Re-subscribing keeps the member's place; removing one keeps the rotation in step.
        assert_eq!(
            index.insert(&filter("$share/workers/jobs/+"), 1, 11),
            Some(10)
        );
        let group = index
            .shared_group(&filter("$share/workers/jobs/+"))
            .unwrap();
        assert_eq!(group.next_member(), Some((1, &11)));
        // The cursor now points at 2; removing 1 (before it) must keep 2 next.
        assert_eq!(index.remove(&filter("$share/workers/jobs/+"), 1), Some(11));
        let group = index
            .shared_group(&filter("$share/workers/jobs/+"))
            .unwrap();
        assert_eq!(group.next_member().map(|m| m.0), Some(2));
        assert_eq!(group.next_member().map(|m| m.0), Some(3));
        assert_eq!(group.next_member().map(|m| m.0), Some(2));
        // The last member leaving removes the group.
        index.remove(&filter("$share/workers/jobs/+"), 2);
        index.remove(&filter("$share/workers/jobs/+"), 3);
        assert!(index
            .shared_group(&filter("$share/workers/jobs/+"))
            .is_none());
        assert!(index.shared_group(&filter("jobs/+")).is_none());
    }

    #[test]
    fn remove_prunes_nodes() {
        let mut index = SubscriptionIndex::new();
        let filters = [
            "a/b/c",
            "a/b/c/d",
            "a/+/c",
            "a/#",
            "#",
            "+",
            "/",
            "//",
            "a/b",
            "$share/g/a/b/#",
            "$share/h/+/+/+",
            "x/y/z/#",
            "+/+/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            index.insert(&filter(f), 1, i as u32);
            index.insert(&filter(f), 2, i as u32);
        }
        assert!(index.node_count() > 0);
        assert_eq!(index.remove(&filter("a/b/c"), 3), None);
        assert_eq!(index.remove(&filter("q/r"), 1), None);
        assert_eq!(index.remove(&filter("$share/zz/a/b/#"), 1), None);
        for (i, f) in filters.iter().enumerate().rev() {
            assert_eq!(index.remove(&filter(f), 1), Some(i as u32));
            assert_eq!(index.remove(&filter(f), 1), None);
        }
        assert_eq!(index.len(), filters.len());
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(index.remove(&filter(f), 2), Some(i as u32));
        }
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 0);
        assert!(index.root.is_empty());

        // Removing a leaf keeps the nodes still in use.
        index.insert(&filter("a/b/c/d"), 1, 0);
        index.insert(&filter("a/b"), 1, 0);
        index.insert(&filter("a/x/y"), 1, 0);
        assert_eq!(index.node_count(), 6);
        index.remove(&filter("a/b/c/d"), 1);
        assert_eq!(index.node_count(), 4);
        index.remove(&filter("a/b"), 1);
        assert_eq!(index.node_count(), 3);
        assert_eq!(keys(&index, "a/x/y"), [1]);
        index.remove(&filter("a/x/y"), 1);
        assert_eq!(index.node_count(), 0);
    }

    #[test]
    fn empty_topic_matches_nothing() {
        let mut index = SubscriptionIndex::new();
        index.insert(&filter("#"), 1, 0);
        index.insert(&filter("+"), 1, 0);
        let mut n = 0;
        index.matches(&TopicName::empty(), |_| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn deep_topics_and_filters_do_not_overflow_the_stack() {
        // 32,767 '+' levels and a topic of 65,535 '/' (65,536 empty levels).
        let deep_filter = vec!["+"; 32_767].join("/");
        let deep_literal = "/".repeat(40_000);
        let topic = name(&"/".repeat(65_535));
        let mut index = SubscriptionIndex::new();
        index.insert(&filter(&deep_filter), 1, 0);
        index.insert(&filter(&format!("{deep_literal}#")), 2, 0);
        index.insert(&filter(&deep_literal), 3, 0);
        assert_eq!(keys(&index, &"/".repeat(32_766)), [1]);
        assert_eq!(keys(&index, &"/".repeat(40_000)), [2, 3]);
        assert_eq!(keys(&index, topic.as_str()), [2]);
        assert_eq!(index.remove(&filter(&deep_filter), 1), Some(0));
        assert_eq!(index.node_count(), 40_001);
        // Dropping a deep trie is iterative too.
        drop(index);
    }

    /// xorshift64*: a tiny deterministic PRNG for the randomized tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const LEVELS: [&str; 6] = ["a", "b", "", "$x", "$SYS", "cc"];

    fn random_topic(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(4);
        let t = (0..depth)
            .map(|_| LEVELS[rng.below(LEVELS.len())])
            .collect::<Vec<_>>()
            .join("/");
        // A topic name is at least one character long [MQTT-4.7.3-1].
        if t.is_empty() {
            "/".to_owned()
        } else {
            t
        }
    }

    fn random_filter(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(4);
        let mut levels: Vec<&str> = (0..depth)
            .map(|_| match rng.below(4) {
                0 => "+",
                _ => LEVELS[rng.below(LEVELS.len())],
            })
            .collect();
        if rng.below(3) == 0 {
            levels.push("#");
        }
        let mut f = levels.join("/");
        if f.is_empty() {
            f.push('/');
        }
        match rng.below(6) {
            0 => format!("$share/g{}/{f}", rng.below(2)),
            _ => f,
        }
    }

    #[test]
    fn randomized_against_brute_force_filter_matches() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut total_direct, mut total_shared) = (0, 0);
        for round in 0..20 {
            let mut index = SubscriptionIndex::new();
            // The reference: (filter, key, value).
            let mut reference: Vec<(TopicFilter, u32, u32)> = Vec::new();
            for step in 0..300u32 {
                let f = filter(&random_filter(&mut rng));
                let key = rng.below(8) as u32;
                if rng.below(4) == 0 {
                    let pos = reference.iter().position(|(g, k, _)| *g == f && *k == key);
                    let expect = pos.map(|p| reference.remove(p).2);
                    assert_eq!(index.remove(&f, key), expect);
                } else {
                    let pos = reference.iter().position(|(g, k, _)| *g == f && *k == key);
                    let expect = match pos {
                        Some(p) => Some(std::mem::replace(&mut reference[p].2, step)),
                        None => {
                            reference.push((f.clone(), key, step));
                            None
                        }
                    };
                    assert_eq!(index.insert(&f, key, step), expect);
                }
                assert_eq!(index.len(), reference.len());
            }
            for _ in 0..200 {
                let t = random_topic(&mut rng);
                let (direct, shared) = collect(&index, &t);
                let mut want_direct: Vec<(u32, u32)> = reference
                    .iter()
                    .filter(|(f, _, _)| {
                        !f.is_shared() && filter_matches(f.filter_bytes(), t.as_bytes())
                    })
                    .map(|(_, k, v)| (*k, *v))
                    .collect();
                want_direct.sort();
                assert_eq!(direct, want_direct, "round {round}, topic {t:?}");
                // Groups: (name, members in subscription order) per matching shared filter.
                let mut want_shared: Vec<(String, Vec<u32>)> = Vec::new();
                let mut seen: Vec<&TopicFilter> = Vec::new();
                for (f, _, _) in &reference {
                    if f.is_shared()
                        && !seen.contains(&f)
                        && filter_matches(f.filter_bytes(), t.as_bytes())
                    {
                        seen.push(f);
                        let members = reference
                            .iter()
                            .filter(|(g, _, _)| g == f)
                            .map(|(_, k, _)| *k)
                            .collect();
                        want_shared.push((f.share_name().unwrap().to_owned(), members));
                    }
                }
                want_shared.sort();
                assert_eq!(shared, want_shared, "round {round}, topic {t:?}");
                total_direct += direct.len();
                total_shared += shared.len();
            }
            // Remove everything: the trie must be empty again.
            for (f, k, v) in reference.drain(..) {
                assert_eq!(index.remove(&f, k), Some(v));
            }
            assert!(index.is_empty());
            assert_eq!(index.node_count(), 0);
        }
        // The generator is dense enough that the comparison is not vacuous.
        assert!(
            total_direct > 10_000 && total_shared > 1_000,
            "{total_direct} {total_shared}"
        );
    }
}
