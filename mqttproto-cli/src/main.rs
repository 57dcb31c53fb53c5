//! `mqttproto`: the command-line tool.
//!
//! Subcommands:
//!
//! * `broker`: an MQTT 5 broker (by default on 127.0.0.1:1883) that prints where it listens and
//!   serves until Ctrl-C or SIGTERM, then disconnects its clients with 0x8B and exits (its
//!   warnings, such as refused connections, on standard error);
//! * `pub` / `sub`: publish and subscribe, in the spirit of `mosquitto_pub` / `mosquitto_sub`
//!   (the common short flags mean the same);
//! * `passwd FILE USER`: adds, updates (`--password` or stdin) or deletes (`-D`) a user of a
//!   password file for the broker (`-c` creates the file);
//! * `decode`: parses MQTT 5 packets given in hex and prints them, or the reason code a
//!   receiver would answer with;
//! * `bench`: a load tool for MQTT 5 brokers (fan-in, fan-out, latency, large messages, idle
//!   connections).
#![forbid(unsafe_code)]

mod bench;
mod broker;
mod client_cmds;
mod config;
mod log;
mod passwd;

use std::io::Read;
use std::process::ExitCode;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use mqttproto::proto::codec::decode;
use mqttproto::proto::ProtocolVersion;

#[derive(Parser)]
#[command(name = "mqttproto", version, about = "MQTT 5 toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an MQTT 5 broker. Prints one line per listener ("listening on mqtt://IP:PORT"), then
    /// serves until Ctrl-C or SIGTERM.
    Broker(broker::BrokerArgs),
    /// Publish messages (flags as mosquitto_pub: -h -p -t -m -q -r -C -u -P -i -D …).
    #[command(disable_help_flag = true)]
    Pub(client_cmds::PubArgs),
    /// Subscribe and print messages (flags as mosquitto_sub: -h -p -t -q -C -v -W -D …).
    #[command(disable_help_flag = true)]
    Sub(client_cmds::SubArgs),
    /// Add, update or delete (-D) a user of a broker password file. The password comes from
    /// --password or the first line of standard input; -c creates the file.
    Passwd(passwd::PasswdArgs),
    /// Decode MQTT 5 packets given as hex (arguments, or standard input) and print them.
    Decode {
        /// Hex bytes; whitespace and ':' separators are ignored. Reads stdin when absent.
        hex: Vec<String>,
        /// Maximum packet size to enforce.
        #[arg(long, default_value_t = 268_435_460)]
        max_packet_size: u32,
    },
    /// Load a broker and measure it: fan-in, fan-out, latency, large messages, idle
    /// connections (see `mqttproto bench --help`).
    Bench(bench::BenchArgs),
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not a hex byte"))
        })
        .collect()
}

fn run_decode(hex: Vec<String>, max_packet_size: u32) -> Result<(), String> {
    let text = if hex.is_empty() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        s
    } else {
        hex.join("")
    };
    let mut buf = BytesMut::from(&parse_hex(&text)?[..]);
    let mut count = 0;
    loop {
        match decode(&mut buf, ProtocolVersion::V5, max_packet_size) {
            Ok(Some(packet)) => {
                count += 1;
                println!("{packet:#?}");
            }
            Ok(None) if buf.is_empty() => break,
            Ok(None) => {
                return Err(format!(
                    "{} trailing bytes hold an incomplete packet",
                    buf.len()
                ))
            }
            Err(e) => {
                let statement = e.statement().map(|s| format!(" ({s})")).unwrap_or_default();
                return Err(format!(
                    "packet {} is invalid: {e}; a receiver answers with reason code {}{statement}",
                    count + 1,
                    e.reason_code()
                ));
            }
        }
    }
    if count == 0 {
        return Err("no packet in the input".into());
    }
    Ok(())
}

fn run_async(f: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?
        .block_on(f)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Pub(args) => run_async(client_cmds::run_pub(args)),
        Command::Sub(args) => run_async(client_cmds::run_sub(args)),
        Command::Decode {
            hex,
            max_packet_size,
        } => run_decode(hex, max_packet_size),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
