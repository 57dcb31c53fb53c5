//! The built-in password file: an authenticator over salted, slow password hashes, for both
//! brokers: [`PasswordFile`] implements `tokio::broker::Authenticator` (feature `tokio`) and
//! `blocking::broker::Authenticator` (feature `blocking`).
//!
//! # Format
//!
//! One user per line:
//!
//! ```text
//! USER:$pbkdf2-sha512$ITERATIONS$SALT$HASH
//! ```
//!
//! * `USER` is the MQTT User Name (any UTF-8 text without `:` or a line break);
//! * `ITERATIONS` is the PBKDF2 iteration count (decimal; [`DEFAULT_ITERATIONS`] for new
//!   entries, at least [`MIN_ITERATIONS`]);
//! * `SALT` is a random salt of 16 bytes and `HASH` the 64-byte PBKDF2-HMAC-SHA512 output,
//!   both in standard base64 without padding.
//!
//! Empty lines and lines starting with `#` are ignored. `mqttproto passwd FILE USER` manages
//! the file.
//!
//! # Verdicts
//!
//! A known user with the right password is accepted. A client without a User Name is refused
//! with 0x87 Not authorized (unless [`PasswordFile::allow_anonymous`] is set); an unknown user,
//! a missing or wrong password with 0x86 Bad User Name or Password. Unknown users cost as much
//! time as known ones, so that timing does not tell which users exist. The async broker hashes on
//! tokio's blocking pool, not on the runtime's workers; the blocking broker on the thread that
//! authenticates the client.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use mqttproto_core::ReasonCode;
use sha2::Sha512;

/// The iteration count of new entries (OWASP's recommendation for PBKDF2-HMAC-SHA512).
pub const DEFAULT_ITERATIONS: u32 = 210_000;
/// The fewest iterations [`PasswordHash::new`] accepts.
pub const MIN_ITERATIONS: u32 = 100_000;
const SCHEME: &str = "pbkdf2-sha512";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 64;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A salted PBKDF2-HMAC-SHA512 password hash, as stored in a password file
/// (`$pbkdf2-sha512$ITERATIONS$SALT$HASH`).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "${SCHEME}${}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.hash)
        )
    }
}

fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt. Fails when the system has no randomness or
    /// `iterations` is below [`MIN_ITERATIONS`].
    pub fn new(password: &[u8], iterations: u32) -> Result<PasswordHash, String> {
        if iterations < MIN_ITERATIONS {
            return Err(format!("at least {MIN_ITERATIONS} iterations are required"));
        }
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
        let hash = derive(password, &salt, iterations);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Like [`new`](Self::new) without the minimum iteration count: a fast, weak hash for
    /// tests only (debug builds hash slowly). Never use it for real passwords.
    #[doc(hidden)]
    pub fn new_insecure_for_tests(password: &[u8], iterations: u32) -> PasswordHash {
        let mut salt = vec![7u8; SALT_LEN];
        let _ = getrandom::fill(&mut salt);
        let hash = derive(password, &salt, iterations.max(1));
        PasswordHash {
            iterations: iterations.max(1),
            salt,
            hash,
        }
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Whether `password` is the one hashed (compared in constant time).
    pub fn verify(&self, password: &[u8]) -> bool {
        let candidate = derive(password, &self.salt, self.iterations);
        candidate.len() == self.hash.len()
            && candidate
                .iter()
                .zip(&self.hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('$');
        if parts.next() != Some("") {
            return Err("a hash starts with `$`".into());
        }
        match parts.next() {
            Some(SCHEME) => {}
            Some(other) => {
                return Err(format!(
                    "unknown hash scheme {other:?} (expected {SCHEME:?})"
                ))
            }
            None => return Err("no hash scheme".into()),
        }
        let iterations: u32 = parts
            .next()
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or("bad iteration count")?;
        let salt = parts
            .next()
            .and_then(|s| B64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or("bad salt (expected base64 without padding)")?;
        let hash = parts
            .next()
            .and_then(|h| B64.decode(h).ok())
            .filter(|h| h.len() == HASH_LEN)
            .ok_or("bad hash (expected 64 bytes in base64 without padding)")?;
        if parts.next().is_some() {
            return Err("junk after the hash".into());
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }
}

/// An error in a password or ACL file, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based), when the error is about one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The users of a password file (see the [module documentation](self)), in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordEntries {
    entries: Vec<(String, PasswordHash)>,
}

impl PasswordEntries {
    /// Parses the text of a password file; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<PasswordEntries, (usize, String)> {
        let mut entries: Vec<(String, PasswordHash)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((i + 1, "expected USER:$pbkdf2-sha512$…".to_string()))?;
            if user.is_empty() {
                return Err((i + 1, "empty user name".into()));
            }
            let hash = hash.trim().parse().map_err(|e| (i + 1, e))?;
            if entries.iter().any(|(u, _)| u == user) {
                return Err((i + 1, format!("user {user:?} appears twice")));
            }
            entries.push((user.to_string(), hash));
        }
        Ok(PasswordEntries { entries })
    }

    /// Reads a password file.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordEntries, FileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        PasswordEntries::parse(&text).map_err(|(line, message)| FileError {
            path: path.to_path_buf(),
            line: Some(line),
            message,
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect()
    }

    /// The hash of `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.entries.iter().find(|(u, _)| u == user).map(|(_, h)| h)
    }

    /// Adds `user`, or replaces its hash. Fails for a user name a line cannot hold.
    pub fn set(&mut self, user: &str, hash: PasswordHash) -> Result<(), String> {
        if user.is_empty() || user.contains([':', '\n', '\r']) || user.starts_with('#') {
            return Err(format!(
                "invalid user name {user:?}: it must be non-empty, not start with `#`, and hold \
                 no `:` or line break"
            ));
        }
        match self.entries.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => entry.1 = hash,
            None => self.entries.push((user.to_string(), hash)),
        }
        Ok(())
    }

    /// Removes `user`; whether it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(u, _)| u != user);
        self.entries.len() != before
    }

    /// The user names.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(u, _)| u.as_str())
    }
}

/// An authenticator that checks User Name and Password against a password file (see the
/// [module documentation](self) for the format and the verdicts).
#[derive(Debug, Clone)]
pub struct PasswordFile {
    users: Arc<HashMap<String, PasswordHash>>,
    /// A hash checked for unknown users, so that they take as long as known ones.
    decoy: Arc<PasswordHash>,
    allow_anonymous: bool,
}

impl PasswordFile {
    /// Reads the password file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordFile, FileError> {
        Ok(PasswordFile::from_entries(PasswordEntries::load(path)?))
    }

    /// An authenticator over parsed entries.
    pub fn from_entries(entries: PasswordEntries) -> PasswordFile {
        let iterations = entries
            .entries
            .iter()
            .map(|(_, h)| h.iterations)
            .max()
            .unwrap_or(DEFAULT_ITERATIONS);
        let decoy = PasswordHash {
            iterations,
            salt: vec![0; SALT_LEN],
            hash: vec![0; HASH_LEN],
        };
        PasswordFile {
            users: Arc::new(entries.entries.into_iter().collect()),
            decoy: Arc::new(decoy),
            allow_anonymous: false,
        }
    }

    /// Whether clients without a User Name are let in (default: no, they get 0x87).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// The verdict for a User Name and Password (blocking: hashes the password).
    pub fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> ReasonCode {
        let Some(user) = username else {
            return if self.allow_anonymous && password.is_none() {
                ReasonCode::Success
            } else {
                ReasonCode::NotAuthorized
            };
        };
        let password = password.unwrap_or_default();
        match self.users.get(user) {
            Some(hash) if hash.verify(password) => ReasonCode::Success,
            Some(_) => ReasonCode::BadUserNameOrPassword,
            None => {
                let _ = self.decoy.verify(password);
                ReasonCode::BadUserNameOrPassword
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_verify() {
        let h = PasswordHash::new(b"secret", MIN_ITERATIONS).unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$pbkdf2-sha512$100000$"), "{text}");
        let back: PasswordHash = text.parse().unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"secret"));
        assert!(!back.verify(b"secreT"));
        assert!(PasswordHash::new(b"x", 10).is_err());
        assert!("$md5$1$AA$AA".parse::<PasswordHash>().is_err());
        assert!("$pbkdf2-sha512$0$AAAA$AAAA"
            .parse::<PasswordHash>()
            .is_err());
    }

    #[test]
    fn entries_parse_edit_and_report_lines() {
        let h = PasswordHash::new_insecure_for_tests(b"pw", 1000);
        let text = format!("# users\n\nalice:{h}\n");
        let mut e = PasswordEntries::parse(&text).unwrap();
        assert_eq!(e.users().collect::<Vec<_>>(), ["alice"]);
        e.set("bob", h.clone()).unwrap();
        assert!(e.set("a:b", h.clone()).is_err());
        assert!(e.remove("alice"));
        assert!(!e.remove("alice"));
        assert_eq!(e.to_text(), format!("bob:{h}\n"));
        assert_eq!(
            PasswordEntries::parse("ok:x\n").unwrap_err().0,
            1,
            "bad hash on line 1"
        );
        assert_eq!(PasswordEntries::parse("\nnocolon\n").unwrap_err().0, 2);
        let file = PasswordFile::from_entries(e);
        assert_eq!(file.check(Some("bob"), Some(b"pw")), ReasonCode::Success);
        assert_eq!(
            file.check(Some("bob"), Some(b"no")),
            ReasonCode::BadUserNameOrPassword
        );
        assert_eq!(
            file.check(Some("eve"), Some(b"pw")),
            ReasonCode::BadUserNameOrPassword
        );
        assert_eq!(file.check(None, None), ReasonCode::NotAuthorized);
        let open = file.allow_anonymous(true);
        assert_eq!(open.check(None, None), ReasonCode::Success);
    }
}
