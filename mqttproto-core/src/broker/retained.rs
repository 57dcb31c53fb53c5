//! The retained-message store: one message per topic name, in a trie by topic level (section
//! 3.3.1.3).
//!
//! [`RetainedStore`] keeps the last retained message of each topic and finds the messages a new
//! subscription's filter matches by walking only the part of the trie the filter selects: a
//! literal level follows one child, `+` every child of that node, `#` the whole subtree below it.
//! Filters starting with a wildcard skip topics starting with `$` [MQTT-4.7.2-1].
//!
//! The store does not interpret messages. The protocol rules are the broker's:
//!
//! - a PUBLISH with RETAIN 1 replaces the topic's retained message [MQTT-3.3.1-5] (use
//!   [`insert`](RetainedStore::insert));
//! - one with RETAIN 1 and an empty payload removes it and is not stored [MQTT-3.3.1-6,
//!   MQTT-3.3.1-7] (use [`remove`](RetainedStore::remove), not `insert`);
//! - RETAIN 0 leaves the store alone [MQTT-3.3.1-8];
//! - expired messages are dropped with [`retain`](RetainedStore::retain), given the current time.
//!
//! Children are kept in a `BTreeMap`, so [`matching`](RetainedStore::matching) visits topics in a
//! deterministic order (level by level, parent before children, levels in byte order), which keeps
//! the broker a pure function of its inputs. All walks are iterative: a topic of 65,536 empty
//! levels cannot overflow the stack.
//!
//! ```
//! use mqttproto_core::broker::retained::RetainedStore;
//! use mqttproto_core::{TopicFilter, TopicName};
//!
//! let mut store = RetainedStore::new();
//! let topic = |s: &str| TopicName::try_from(s).unwrap();
//! store.insert(topic("sensors/1/temp"), "21.5");
//! store.insert(topic("sensors/2/temp"), "19.0");
//! store.insert(topic("sensors/2/humidity"), "40");
//! assert_eq!(store.insert(topic("sensors/1/temp"), "21.7"), Some("21.5"));
//!
//! let mut found = Vec::new();
//! store.matching(&TopicFilter::try_from("sensors/+/temp").unwrap(), |t, m| {
//!     found.push((t.as_str().to_owned(), *m))
//! });
//! assert_eq!(found, [("sensors/1/temp".to_owned(), "21.7"), ("sensors/2/temp".to_owned(), "19.0")]);
//! ```

use std::collections::btree_map::{self, BTreeMap};
use std::fmt;
use std::ops::Bound;

use super::index::{next_level, DfsStack, END};
use crate::topic::{TopicFilter, TopicName};

/// A stored message and the topic it was retained under.
struct Entry<M> {
    topic: TopicName,
    msg: M,
}

/// One trie node: a topic name prefix.
struct Node<M> {
    children: BTreeMap<Box<[u8]>, Node<M>>,
    entry: Option<Box<Entry<M>>>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: BTreeMap::new(),
            entry: None,
        }
    }
}

impl<M> Drop for Node<M> {
    /// Drops the subtree iteratively: the trie is as deep as the deepest retained topic.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending: Vec<Node<M>> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(std::mem::take(&mut node.children).into_values());
        }
    }
}

type Children<'a, M> = btree_map::Range<'a, Box<[u8]>, Node<M>>;

/// Work items of the matching walk.
enum Frame<'a, M> {
    /// `node`'s topic levels match the filter's levels before byte `pos` of the filter.
    Node(&'a Node<M>, usize),
    /// A `+` level: each of these children matches it; continue at filter byte `pos`.
    Each(Children<'a, M>, usize),
    /// Below a `#`: each of these children and everything under them matches.
    All(Children<'a, M>),
}

/// The children of `node`, except at the root those whose level starts with `$` when `no_dollar`.
/// Returns the one or two ranges to walk.
fn children<M>(node: &Node<M>, no_dollar: bool) -> (Children<'_, M>, Option<Children<'_, M>>) {
    if !no_dollar {
        return (node.children.range::<[u8], _>(..), None);
    }
    // Levels starting with '$' are exactly the keys in ["$", "%").
    let before = node
        .children
        .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&b"$"[..])));
    let after = node
        .children
        .range::<[u8], _>((Bound::Included(&b"%"[..]), Bound::Unbounded));
    (before, Some(after))
}

/// Retained messages by topic name, in a trie by topic level.
///
/// `M` is whatever the broker stores per retained message, such as the PUBLISH and the time it
/// arrived (for Message Expiry). See the [module documentation](self) for the costs and which
/// rules belong to the broker.
pub struct RetainedStore<M> {
    root: Node<M>,
    len: usize,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<M> fmt::Debug for RetainedStore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn levels(topic: &[u8]) -> impl Iterator<Item = &[u8]> {
    topic.split(|&b| b == b'/')
}

impl<M> RetainedStore<M> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every message.
    pub fn clear(&mut self) {
        self.root = Node::default();
        self.len = 0;
    }

    /// Stores `msg` as the retained message of `topic`, returning the message it replaces
    /// [MQTT-3.3.1-5].
    ///
    /// The stored topic name is replaced too, so the old message's buffers are released. An empty
    /// payload must not be stored [MQTT-3.3.1-7]: that check is the caller's, as the store does
    /// not look into `M`. The alias-only empty topic name is not a topic (resolve the alias first):
    /// for it nothing is stored and `msg` is handed back.
    pub fn insert(&mut self, topic: TopicName, msg: M) -> Option<M> {
        if topic.is_empty() {
            return Some(msg);
        }
        // Fast path, no key allocation: the node exists (typically a topic re-retained).
        if let Some(node) = Self::node_mut(&mut self.root, topic.as_bytes()) {
            return Self::put(node, &mut self.len, topic, msg);
        }
        let mut node = &mut self.root;
        for level in levels(topic.as_bytes()) {
            node = node.children.entry(Box::from(level)).or_default();
        }
        Self::put(node, &mut self.len, topic, msg)
    }

    fn put(node: &mut Node<M>, len: &mut usize, topic: TopicName, msg: M) -> Option<M> {
        match node.entry.replace(Box::new(Entry { topic, msg })) {
            Some(old) => Some(old.msg),
            None => {
                *len += 1;
                None
            }
        }
    }

    fn node<'n>(root: &'n Node<M>, topic: &[u8]) -> Option<&'n Node<M>> {
        let mut node = root;
        for level in levels(topic) {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    fn node_mut<'n>(root: &'n mut Node<M>, topic: &[u8]) -> Option<&'n mut Node<M>> {
        let mut node = root;
        for level in levels(topic) {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }

    /// The retained message of `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&M> {
        if topic.is_empty() {
            return None;
        }
        Some(
            &Self::node(&self.root, topic.as_bytes())?
                .entry
                .as_deref()?
                .msg,
        )
    }

    /// The retained message of `topic`, mutably.
    pub fn get_mut(&mut self, topic: &TopicName) -> Option<&mut M> {
        if topic.is_empty() {
            return None;
        }
        let node = Self::node_mut(&mut self.root, topic.as_bytes())?;
        Some(&mut node.entry.as_deref_mut()?.msg)
    }

    /// Removes and returns the retained message of `topic` (a retained PUBLISH with an empty
    /// payload [MQTT-3.3.1-6]). Trie nodes left empty are freed.
    pub fn remove(&mut self, topic: &TopicName) -> Option<M> {
        if topic.is_empty() {
            return None;
        }
        let node = Self::node_mut(&mut self.root, topic.as_bytes())?;
        let entry = node.entry.take()?;
        self.len -= 1;
        if node.children.is_empty() {
            self.prune(topic.as_bytes());
        }
        Some(entry.msg)
    }

    /// Frees the chain of nodes ending at `topic`'s node if that node is empty.
    fn prune(&mut self, topic: &[u8]) {
        // The shallowest node from which the path holds nothing but the chain down to the empty
        // last node is detached from its parent.
        let mut node = &self.root;
        let mut cut: Option<usize> = None;
        for (depth, level) in levels(topic).enumerate() {
            let Some(child) = node.children.get(level) else {
                return;
            };
            if child.entry.is_some() || child.children.len() > 1 {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
            node = child;
        }
        if node.entry.is_some() || !node.children.is_empty() {
            return;
        }
        let Some(cut) = cut else {
            return;
        };
        let mut node = &mut self.root;
        for (depth, level) in levels(topic).enumerate() {
            if depth == cut {
                node.children.remove(level);
                return;
            }
            node = match node.children.get_mut(level) {
                Some(child) => child,
                None => return,
            };
        }
    }

    /// Keeps only the messages for which `keep` returns true, for example to drop those whose
    /// Message Expiry Interval has passed; `keep` may also update a message. Returns how many were
    /// removed. Visits every message once; frees the trie nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&TopicName, &mut M) -> bool) -> usize {
        let mut removed: Vec<TopicName> = Vec::new();
        let mut stack: DfsStack<&mut Node<M>, 16> = DfsStack::new();
        stack.push(&mut self.root);
        while let Some(node) = stack.pop() {
            if let Some(entry) = node.entry.as_deref_mut() {
                if !keep(&entry.topic, &mut entry.msg) {
                    if let Some(entry) = node.entry.take() {
                        removed.push(entry.topic);
                    }
                }
            }
            for child in node.children.values_mut() {
                stack.push(child);
            }
        }
        self.len -= removed.len();
        for topic in &removed {
            self.prune(topic.as_bytes());
        }
        removed.len()
    }

    /// Calls `f` for every retained message whose topic matches `filter` (for a shared
    /// subscription, the part after `$share/{ShareName}/`; whether retained messages are sent for
    /// shared subscriptions is the broker's decision).
    ///
    /// Filters starting with `+` or `#` skip topics starting with `$` [MQTT-4.7.2-1]; `#` matches
    /// the parent level; `+` matches an empty level. Messages come in a deterministic order: by
    /// level, a parent before its children, sibling levels in byte order.
    ///
    /// Cost: proportional to the trie nodes the filter selects, not to the number of retained
    /// messages. Does not allocate unless the walk is deeper than 8 levels.
    pub fn matching<'a>(&'a self, filter: &TopicFilter, mut f: impl FnMut(&'a TopicName, &'a M)) {
        let fb = filter.filter_bytes();
        let mut visit = |node: &'a Node<M>| {
            if let Some(e) = node.entry.as_deref() {
                f(&e.topic, &e.msg);
            }
        };
        let mut stack: DfsStack<Frame<'a, M>, 16> = DfsStack::new();
        stack.push(Frame::Node(&self.root, 0));
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Node(node, pos) => {
                    if pos == END {
                        visit(node);
                        continue;
                    }
                    // Only the root is visited at position 0.
                    let at_root = pos == 0;
                    let (level, next) = next_level(fb, pos);
                    match level {
                        b"#" => {
                            // `#` matches the parent level (never the root: it has no message).
                            visit(node);
                            let (first, second) = children(node, at_root);
                            if let Some(second) = second {
                                stack.push(Frame::All(second));
                            }
                            stack.push(Frame::All(first));
                        }
                        b"+" => {
                            let (first, second) = children(node, at_root);
                            if let Some(second) = second {
                                stack.push(Frame::Each(second, next));
                            }
                            stack.push(Frame::Each(first, next));
                        }
                        _ => {
                            if let Some(child) = node.children.get(level) {
                                stack.push(Frame::Node(child, next));
                            }
                        }
                    }
                }
                Frame::Each(mut range, next) => {
                    if let Some((_, child)) = range.next() {
                        stack.push(Frame::Each(range, next));
                        stack.push(Frame::Node(child, next));
                    }
                }
                Frame::All(mut range) => {
                    if let Some((_, child)) = range.next() {
                        stack.push(Frame::All(range));
                        visit(child);
                        if !child.children.is_empty() {
                            stack.push(Frame::All(child.children.range::<[u8], _>(..)));
                        }
                    }
                }
            }
        }
    }

    /// Calls `f` for every retained message, `$` topics included, in the order of
    /// [`matching`](Self::matching).
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a TopicName, &'a M)) {
        let mut stack: DfsStack<Children<'a, M>, 16> = DfsStack::new();
        stack.push(self.root.children.range::<[u8], _>(..));
        while let Some(mut range) = stack.pop() {
            if let Some((_, child)) = range.next() {
                stack.push(range);
                if let Some(e) = child.entry.as_deref() {
                    f(&e.topic, &e.msg);
                }
                if !child.children.is_empty() {
                    stack.push(child.children.range::<[u8], _>(..));
                }
            }
        }
    }

    /// The number of trie nodes below the root (tests).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += node.children.len();
            stack.extend(node.children.values());
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

    fn matching(store: &RetainedStore<u32>, f: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        store.matching(&filter(f), |t, m| out.push((t.as_str().to_owned(), *m)));
        out
    }

    fn topics(store: &RetainedStore<u32>, f: &str) -> Vec<String> {
        let mut out: Vec<String> = matching(store, f).into_iter().map(|(t, _)| t).collect();
        out.sort();
        out
    }

    #[test]
    fn insert_replaces_get_remove_mqtt_3_3_1_5_and_3_3_1_6() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.insert(name("a/b"), 1), None);
        assert_eq!(store.insert(name("a"), 2), None);
        assert_eq!(store.insert(name("a/b"), 3), Some(1));
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&name("a/b")), Some(&3));
        assert_eq!(store.get(&name("a")), Some(&2));
        assert_eq!(store.get(&name("a/b/c")), None);
        assert_eq!(store.get(&name("a/")), None);
        if let Some(m) = store.get_mut(&name("a")) {
            *m = 4;
        }
        assert_eq!(store.remove(&name("a")), Some(4));
        assert_eq!(store.remove(&name("a")), None);
        assert_eq!(store.get(&name("a/b")), Some(&3));
        assert_eq!(store.len(), 1);
        // The alias-only empty name is not a topic.
        assert_eq!(store.insert(TopicName::empty(), 9), Some(9));
        assert_eq!(store.get(&TopicName::empty()), None);
        assert_eq!(store.len(), 1);
        store.clear();
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn replacing_keeps_the_new_topic_name() {
        let mut store = RetainedStore::new();
        store.insert(name("x/y"), 1);
        let newer = name("x/y");
        store.insert(newer.clone(), 2);
        let mut seen = Vec::new();
        store.for_each(|t, _| seen.push(t.as_bytes().as_ptr()));
        assert_eq!(seen, [newer.as_bytes().as_ptr()]);
    }

    #[test]
    fn wildcards_spec_examples_section_4_7() {
        let mut store = RetainedStore::new();
        let all = [
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "/finance",
            "/",
            "finance",
        ];
        for (i, t) in all.iter().enumerate() {
            store.insert(name(t), i as u32);
        }
        assert_eq!(
            topics(&store, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(topics(&store, "sport/#").len(), 6);
        assert_eq!(topics(&store, "#").len(), all.len());
        assert_eq!(
            topics(&store, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(topics(&store, "sport/+"), ["sport/"]);
        assert_eq!(topics(&store, "+/+"), ["/", "/finance", "sport/"]);
        assert_eq!(topics(&store, "/+"), ["/", "/finance"]);
        assert_eq!(topics(&store, "+"), ["finance", "sport"]);
        assert_eq!(topics(&store, "finance"), ["finance"]);
        assert_eq!(topics(&store, "finance/#"), ["finance"]);
        assert!(topics(&store, "nothing/#").is_empty());
        // A shared subscription matches with the part after the ShareName.
        assert_eq!(topics(&store, "$share/g/+"), ["finance", "sport"]);
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
        let mut store = RetainedStore::new();
        for (i, t) in ["$SYS/a", "$SYS", "$x/a", "a/$SYS", "%"].iter().enumerate() {
            store.insert(name(t), i as u32);
        }
        assert_eq!(topics(&store, "#"), ["%", "a/$SYS"]);
        assert_eq!(topics(&store, "+"), ["%"]);
        assert_eq!(topics(&store, "+/+"), ["a/$SYS"]);
        assert_eq!(topics(&store, "+/#"), ["%", "a/$SYS"]);
        assert_eq!(topics(&store, "$SYS/#"), ["$SYS", "$SYS/a"]);
        assert_eq!(topics(&store, "$SYS/+"), ["$SYS/a"]);
        assert_eq!(topics(&store, "$x/+"), ["$x/a"]);
        let mut all = Vec::new();
        store.for_each(|t, _| all.push(t.as_str().to_owned()));
        assert_eq!(all, ["$SYS", "$SYS/a", "$x/a", "%", "a/$SYS"]);
    }

    #[test]
    fn matching_order_is_deterministic() {
        let mut store = RetainedStore::new();
        for t in ["b/2", "a", "b", "a/1", "b/1", "a/0/x"] {
            store.insert(name(t), 0);
        }
        let order: Vec<String> = matching(&store, "#").into_iter().map(|(t, _)| t).collect();
        assert_eq!(order, ["a", "a/0/x", "a/1", "b", "b/1", "b/2"]);
    }

    #[test]
    fn remove_and_retain_prune_nodes() {
        let mut store = RetainedStore::new();
        for (i, t) in ["a/b/c/d", "a/b", "a/x/y", "/", "//", "$SYS/q"]
            .iter()
            .enumerate()
        {
            store.insert(name(t), i as u32);
        }
        assert_eq!(store.node_count(), 11);
        store.remove(&name("a/b/c/d"));
        assert_eq!(store.node_count(), 9);
        store.remove(&name("a/b"));
        assert_eq!(store.node_count(), 8);
        store.remove(&name("a/b/c"));
        store.remove(&name("zz"));
        assert_eq!(store.node_count(), 8);
        // Update every value and expire the odd ones: "/" (13) and "$SYS/q" (15) go. "/" has a
        // child ("//"), so only the "$SYS/q" chain is freed.
        let removed = store.retain(|_, m| {
            *m += 10;
            *m % 2 == 0
        });
        assert_eq!(removed, 2);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&name("/")), None);
        assert_eq!(store.get(&name("//")), Some(&14));
        assert_eq!(store.get(&name("a/x/y")), Some(&12));
        assert_eq!(store.node_count(), 6);
        assert_eq!(store.retain(|_, _| false), 2);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = "/".repeat(65_535);
        let mut store = RetainedStore::new();
        store.insert(name(&deep), 1);
        store.insert(name(&"/".repeat(30_000)), 2);
        assert_eq!(store.node_count(), 65_536);
        assert_eq!(matching(&store, "#").len(), 2);
        // 30,001 '+' levels match the 30,001 levels of the second topic only.
        let plus = format!("{}+", "+/".repeat(30_000));
        assert_eq!(matching(&store, &plus), [("/".repeat(30_000), 2)]);
        let multi = format!("{}#", "+/".repeat(32_000));
        assert_eq!(matching(&store, &multi), [(deep.clone(), 1)]);
        let mut n = 0;
        store.for_each(|_, _| n += 1);
        assert_eq!(n, 2);
        assert_eq!(store.retain(|_, m| *m == 1), 1);
        assert_eq!(store.node_count(), 65_536);
        assert_eq!(store.remove(&name(&deep)), Some(1));
        assert_eq!(store.node_count(), 0);
        store.insert(name(&deep), 1);
        drop(store);
    }

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

    fn random_levels(rng: &mut Rng, wildcards: bool) -> String {
        let depth = 1 + rng.below(4);
        let mut levels: Vec<&str> = (0..depth)
            .map(|_| match rng.below(4) {
                0 if wildcards => "+",
                _ => LEVELS[rng.below(LEVELS.len())],
            })
            .collect();
        if wildcards && rng.below(3) == 0 {
            levels.push("#");
        }
        let s = levels.join("/");
        if s.is_empty() {
            "/".to_owned()
        } else {
            s
        }
    }

    #[test]
    fn randomized_against_brute_force_filter_matches() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut total = 0;
        for round in 0..20 {
            let mut store = RetainedStore::new();
            let mut reference: Vec<(String, u32)> = Vec::new();
            for step in 0..300u32 {
                let t = random_levels(&mut rng, false);
                let pos = reference.iter().position(|(r, _)| *r == t);
                match rng.below(5) {
                    0 => {
                        let expect = pos.map(|p| reference.remove(p).1);
                        assert_eq!(store.remove(&name(&t)), expect);
                    }
                    1 => {
                        let before = reference.len();
                        reference.retain(|(_, v)| v % 7 != 0);
                        let removed = store.retain(|_, v| *v % 7 != 0);
                        assert_eq!(removed, before - reference.len());
                    }
                    _ => {
                        let expect = match pos {
                            Some(p) => Some(std::mem::replace(&mut reference[p].1, step)),
                            None => {
                                reference.push((t.clone(), step));
                                None
                            }
                        };
                        assert_eq!(store.insert(name(&t), step), expect);
                    }
                }
                assert_eq!(store.len(), reference.len());
            }
            for _ in 0..200 {
                let f = random_levels(&mut rng, true);
                let mut got = matching(&store, &f);
                got.sort();
                let mut want: Vec<(String, u32)> = reference
                    .iter()
                    .filter(|(t, _)| filter_matches(f.as_bytes(), t.as_bytes()))
                    .cloned()
                    .collect();
                want.sort();
                assert_eq!(got, want, "round {round}, filter {f:?}");
                total += got.len();
            }
            assert_eq!(store.retain(|_, _| false), reference.len());
            assert_eq!(store.node_count(), 0);
        }
        // The generator is dense enough that the comparison is not vacuous.
        assert!(total > 5_000, "{total}");
    }
}
