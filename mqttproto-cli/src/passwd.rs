//! `mqttproto passwd`: manages a password file (see `mqttproto::tokio::auth` for the format).

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use mqttproto::tokio::auth::{PasswordEntries, PasswordHash, DEFAULT_ITERATIONS, MIN_ITERATIONS};

/// Options of `mqttproto passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The password file.
    file: PathBuf,
    /// The user to add, update or delete.
    user: String,
    /// Create the file (or empty an existing one) before adding the user.
    #[arg(short = 'c', long = "create", conflicts_with = "delete")]
    create: bool,
    /// Delete the user instead of setting a password.
    #[arg(short = 'D', long = "delete")]
    delete: bool,
    /// The password. Without it, the password is read from standard input (its first line).
    #[arg(long, value_name = "PASSWORD", conflicts_with = "delete")]
    password: Option<String>,
    /// PBKDF2 iterations of the new hash (at least 100000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ITERATIONS)]
    iterations: u32,
}

/// Runs `mqttproto passwd`.
pub fn run(args: PasswdArgs) -> Result<(), String> {
    let path = &args.file;
    let mut entries = if args.create {
        PasswordEntries::default()
    } else {
        match std::fs::read_to_string(path) {
            Ok(text) => PasswordEntries::parse(&text)
                .map_err(|(line, m)| format!("{}:{line}: {m}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.delete => {
                return Err(format!(
                    "{}: no such file (use -c to create it)",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    };
    if args.delete {
        if !entries.remove(&args.user) {
            return Err(format!("{}: no user {:?}", path.display(), args.user));
        }
    } else {
        if args.iterations < MIN_ITERATIONS {
            return Err(format!("--iterations must be at least {MIN_ITERATIONS}"));
        }
        let password = match args.password {
            Some(p) => p,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("reading the password from stdin: {e}"))?;
                text.lines().next().unwrap_or_default().to_string()
            }
        };
        if password.is_empty() {
            return Err("empty password".into());
        }
        let hash = PasswordHash::new(password.as_bytes(), args.iterations)?;
        entries.set(&args.user, hash)?;
    }
    write_private(path, &entries.to_text())
}

/// Writes `text` to `path` through a temporary file (so a crash leaves the old file), readable
/// by its owner only on Unix.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
