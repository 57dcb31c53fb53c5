//! The built-in ACL file: an [`Authorizer`] in the spirit of Mosquitto's `acl_file`.
//!
//! # Format
//!
//! One rule per line; empty lines and lines starting with `#` are ignored.
//!
//! ```text
//! # Rules before any `user` line apply to clients without a User Name.
//! topic read public/#
//!
//! # Rules after `user NAME` apply to the client with that User Name.
//! user alice
//! topic readwrite alice/#
//! topic write commands/+
//! topic deny alice/secret/#
//!
//! # Patterns apply to every client; %c is its Client Identifier, %u its User Name.
//! pattern read devices/%c/in/#
//! pattern write devices/%c/out/%u
//! ```
//!
//! * `topic [ACCESS] TOPIC` and `pattern [ACCESS] TOPIC`, where `ACCESS` is `read`, `write`,
//!   `readwrite` (the default when left out) or `deny`, and `TOPIC` a topic filter that may use
//!   the MQTT wildcards `+` and `#`.
//! * `user NAME` starts the rules of one user (until the next `user` line).
//! * A pattern with `%u` does not apply to a client without a User Name; a pattern with `%c` or
//!   `%u` does not apply when the substituted text holds `+`, `#` or `/` (so a client cannot
//!   widen its own rules by picking an identifier).
//!
//! # Decisions
//!
//! The rules that apply to a client are those of its user (or the anonymous rules) and every
//! pattern. Anything not allowed is denied.
//!
//! * **PUBLISH** to a topic is allowed when a `write` or `readwrite` rule matches the topic and
//!   no `deny` rule does.
//! * **SUBSCRIBE** to a filter is allowed when a `read` or `readwrite` rule **covers** the
//!   filter (every topic the filter matches, the rule matches too: `a/#` covers `a/+/b`, `a/+`
//!   does not cover `a/#`) and no `deny` rule **overlaps** it (matches any topic the filter
//!   matches). For a shared subscription (`$share/GROUP/FILTER`) the check is on `FILTER`.
//!
//! Since every message delivered through a subscription matches the subscription's filter,
//! checking at SUBSCRIBE time is enough: a client never receives a message on a topic it may
//! not read.

use std::path::Path;

use super::auth::FileError;
use super::{Authorizer, ClientInfo};

/// The access a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, overriding any rule that allows.
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    topic: String,
}

/// A parsed ACL file (see the [module documentation](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: Vec<(String, Vec<Rule>)>,
    patterns: Vec<Rule>,
}

fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        if *l == "#" {
            i + 1 == levels.len()
        } else if *l == "+" {
            true
        } else {
            !l.contains(['+', '#'])
        }
    })
}

impl AclFile {
    /// Parses the text of an ACL file; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<AclFile, (usize, String)> {
        let mut acl = AclFile::default();
        let mut current: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: String| (i + 1, m);
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    current = Some(match acl.users.iter().position(|(u, _)| u == rest) {
                        Some(p) => p,
                        None => {
                            acl.users.push((rest.to_string(), Vec::new()));
                            acl.users.len() - 1
                        }
                    });
                }
                "topic" | "pattern" => {
                    let (access, topic) = match rest.split_once(char::is_whitespace) {
                        Some((a, t)) => match a {
                            "read" => (Access::Read, t.trim()),
                            "write" => (Access::Write, t.trim()),
                            "readwrite" => (Access::ReadWrite, t.trim()),
                            "deny" => (Access::Deny, t.trim()),
                            _ => (Access::ReadWrite, rest),
                        },
                        None => (Access::ReadWrite, rest),
                    };
                    if !valid_filter(topic) {
                        return Err(err(format!("invalid topic filter {topic:?}")));
                    }
                    let rule = Rule {
                        access,
                        topic: topic.to_string(),
                    };
                    if word == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = current {
                        acl.users[u].1.push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected `topic`, `pattern` or `user`)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Reads an ACL file.
    pub fn load(path: impl AsRef<Path>) -> Result<AclFile, FileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        AclFile::parse(&text).map_err(|(line, message)| FileError {
            path: path.to_path_buf(),
            line: Some(line),
            message,
        })
    }

    /// The rules that apply to `client`, patterns substituted.
    fn rules(&self, client: &ClientInfo<'_>) -> Vec<Rule> {
        let own = match client.username {
            Some(u) => self
                .users
                .iter()
                .find(|(name, _)| name == u)
                .map(|(_, r)| r.as_slice())
                .unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut rules = own.to_vec();
        let unsafe_text = |s: &str| s.contains(['+', '#', '/']);
        for p in &self.patterns {
            let mut topic = p.topic.clone();
            if topic.contains("%u") {
                match client.username {
                    Some(u) if !unsafe_text(u) => topic = topic.replace("%u", u),
                    _ => continue,
                }
            }
            if topic.contains("%c") {
                if unsafe_text(client.client_id) || client.client_id.is_empty() {
                    continue;
                }
                topic = topic.replace("%c", client.client_id);
            }
            rules.push(Rule {
                access: p.access,
                topic,
            });
        }
        rules
    }

    /// Whether `client` may publish to `topic`.
    pub fn can_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        let rules = self.rules(client);
        let denied = rules
            .iter()
            .any(|r| r.access == Access::Deny && matches(&r.topic, topic));
        !denied
            && rules
                .iter()
                .any(|r| r.access.writes() && matches(&r.topic, topic))
    }

    /// Whether `client` may subscribe to `filter` (without a `$share/GROUP/` prefix).
    pub fn can_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        let rules = self.rules(client);
        let denied = rules
            .iter()
            .any(|r| r.access == Access::Deny && overlaps(&r.topic, filter));
        !denied
            && rules
                .iter()
                .any(|r| r.access.reads() && covers(&r.topic, filter))
    }
}

impl Authorizer for AclFile {
    fn authorize_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.can_publish(client, topic)
    }

    fn authorize_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        self.can_subscribe(client, filter)
    }
}

/// Whether filter `f` matches topic name `t` (MQTT rules: wildcards at the first level do not
/// match topics starting with `$`).
fn matches(f: &str, t: &str) -> bool {
    if t.starts_with('$') && (f.starts_with('+') || f.starts_with('#')) {
        return false;
    }
    let mut fl = f.split('/');
    let mut tl = t.split('/');
    loop {
        match (fl.next(), tl.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic filter `g` matches is matched by filter `f`.
fn covers(f: &str, g: &str) -> bool {
    if (f.starts_with('+') || f.starts_with('#')) && g.starts_with('$') {
        return false;
    }
    let mut fl = f.split('/');
    let mut gl = g.split('/');
    loop {
        match (fl.next(), gl.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters (answers "yes" when in doubt).
fn overlaps(f: &str, g: &str) -> bool {
    let mut fl = f.split('/');
    let mut gl = g.split('/');
    loop {
        match (fl.next(), gl.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::PeerAddr;

    fn who<'a>(id: &'a str, user: Option<&'a str>) -> ClientInfo<'a> {
        ClientInfo {
            client_id: id,
            username: user,
            peer: &PeerAddr::Unknown,
            client_cert: None,
        }
    }

    #[test]
    fn filter_relations() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "x/#"));
        assert!(overlaps("a/secret/#", "a/#"));
        assert!(overlaps("a/+", "+/b"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b", "a/b/c"));
    }

    #[test]
    fn rules_by_user_and_pattern() {
        let acl = AclFile::parse(
            "# comment\ntopic read public/#\nuser alice\ntopic alice/#\ntopic deny alice/secret\n\
             topic write cmd/+\npattern read dev/%c/#\npattern write dev/%u/out\n",
        )
        .unwrap();
        let anon = who("c1", None);
        assert!(acl.can_subscribe(&anon, "public/x"));
        assert!(!acl.can_publish(&anon, "public/x"));
        assert!(acl.can_subscribe(&anon, "dev/c1/#"));
        assert!(!acl.can_publish(&anon, "dev//out"));
        let alice = who("c2", Some("alice"));
        assert!(acl.can_publish(&alice, "alice/x"));
        assert!(!acl.can_publish(&alice, "alice/secret"));
        assert!(!acl.can_subscribe(&alice, "alice/#"), "deny overlaps");
        assert!(acl.can_subscribe(&alice, "alice/open/+"));
        assert!(acl.can_publish(&alice, "cmd/go"));
        assert!(!acl.can_subscribe(&alice, "cmd/go"));
        assert!(acl.can_publish(&alice, "dev/alice/out"));
        assert!(
            !acl.can_subscribe(&alice, "public/x"),
            "anonymous rules only"
        );
        let sneaky = who("+", Some("bob"));
        assert!(!acl.can_subscribe(&sneaky, "dev/x/y"));
        assert_eq!(AclFile::parse("topic read a/#/b").unwrap_err().0, 1);
        assert_eq!(AclFile::parse("\nfoo bar").unwrap_err().0, 2);
    }
}
