//! `mqttproto`: the command-line tool.
//!
//! Today it offers `decode`, which parses MQTT 5 packets given in hex and prints them, or the
//! reason code a receiver would answer with. `broker`, `pub` and `sub` arrive with the drivers.
#![forbid(unsafe_code)]

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
    /// Decode MQTT 5 packets given as hex (arguments, or standard input) and print them.
    Decode {
        /// Hex bytes; whitespace and ':' separators are ignored. Reads stdin when absent.
        hex: Vec<String>,
        /// Maximum packet size to enforce.
        #[arg(long, default_value_t = 268_435_460)]
        max_packet_size: u32,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
