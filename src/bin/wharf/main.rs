//! `wharf`: inspect, operate and benchmark a store from the shell, through the public API only.
//!
//! Exit status: 0 success; 1 the operation failed or found a problem (a locked or corrupt
//! store, `verify` finding damage, an I/O error, a declined `purge`); 2 a usage error (a bad
//! argument, a missing directory or store, an unknown queue); 3 `pop` found the queue empty.

mod bench;
mod inspect;
mod operate;
mod salvage;
mod store;
mod transfer;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use store::CliError;

const EXAMPLES: &str = "\
Examples:
  wharf stats ./jobs-data                  per-queue depths, segments, disk use
  wharf stats ./jobs-data --json           the same for scripts
  wharf peek ./jobs-data mail -n 5         the next five messages, without leasing them
  wharf peek ./jobs-data mail --dead       what sits in mail's dead-letter queue
  echo 'hello' | wharf push ./jobs-data mail
  wharf push ./jobs-data mail 'to: ada' --delay 30s --priority 7
  wharf pop ./jobs-data mail --ack         print the next payload and remove it
  wharf dlq requeue ./jobs-data mail --all
  wharf purge ./jobs-data mail --yes
  wharf verify ./jobs-data                 exit status 1 if anything is damaged
  wharf salvage ./jobs-data --into ./new   keep every intact message of a damaged store
  wharf export ./jobs-data mail > mail.jsonl
  wharf import ./other-data mail < mail.jsonl
  wharf bench --quick

Exit status: 0 ok; 1 the operation failed or found a problem (locked or corrupt store,
damage found by verify, I/O error, purge declined); 2 usage error (bad argument, missing
directory, no store, unknown queue); 3 pop found the queue empty.";

/// Inspect, operate and benchmark a wharf store directory.
#[derive(Parser)]
#[command(name = "wharf", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-queue depths (ready, delayed, in flight, dead-lettered, oldest message, bytes) and
    /// the store's segments, disk use, checkpoint position and format version.
    #[command(
        after_help = "Examples:\n  wharf stats ./jobs-data\n  wharf stats ./jobs-data --json | jq '.queues[].ready'"
    )]
    Stats {
        /// The store directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show waiting messages in delivery order, without leasing them.
    #[command(
        after_help = "Examples:\n  wharf peek ./jobs-data mail\n  wharf peek ./jobs-data mail -n 100 --dead\n  wharf peek ./jobs-data mail -n 1 --raw > next.bin"
    )]
    Peek {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// How many messages to show.
        #[arg(short = 'n', long = "count", default_value_t = 10)]
        count: usize,
        /// Show the queue's dead-letter queue instead.
        #[arg(long)]
        dead: bool,
        /// Write the payloads themselves, one after another, each followed by a newline.
        #[arg(long)]
        raw: bool,
    },
    /// Push a message (the argument, or standard input), or one message per line of input.
    #[command(
        after_help = "Examples:\n  wharf push ./jobs-data mail 'to: ada@example.com'\n  wharf push ./jobs-data mail --delay 5m --priority 9 < payload.bin\n  cat jobs.txt | wharf push ./jobs-data mail --lines"
    )]
    Push {
        /// The store directory (created if it does not exist).
        dir: PathBuf,
        /// The queue (created if it does not exist).
        queue: String,
        /// The payload; read from standard input when absent.
        payload: Option<String>,
        /// Invisible for this long: 250ms, 30s, 5m, 2h, 1d (a bare number is seconds).
        #[arg(long, value_parser = store::parse_duration)]
        delay: Option<std::time::Duration>,
        /// 0 to 9, higher first.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
        priority: Option<u8>,
        /// A dedup key: a second push with the same key stores nothing.
        #[arg(long)]
        key: Option<String>,
        /// One message per line of standard input (empty lines skipped).
        #[arg(long, conflicts_with_all = ["payload", "key"])]
        lines: bool,
    },
    /// Lease the next ready message and write its payload to standard output.
    #[command(after_help = "Without --ack the lease ends when the command exits: the message is \
ready again, with this delivery counted as an attempt.\n\nExamples:\n  wharf pop ./jobs-data mail --ack > job.bin\n  wharf pop ./jobs-data mail || echo empty")]
    Pop {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// Ack the message: it is removed for good.
        #[arg(long)]
        ack: bool,
    },
    /// Dead-letter queue operations.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Remove every waiting message of a queue (asks first unless --yes).
    #[command(
        after_help = "Examples:\n  wharf purge ./jobs-data mail\n  wharf purge ./jobs-data mail.dlq --yes"
    )]
    Purge {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Check every file of the store read-only; exit status 1 if anything is damaged.
    #[command(
        after_help = "It takes no lock: it may run while an application has the store open.\n\nExamples:\n  wharf verify ./jobs-data\n  wharf verify ./jobs-data && echo healthy\n  wharf verify ./jobs-data --json | jq '.problems[]' "
    )]
    Verify {
        /// The store directory.
        dir: PathBuf,
        /// Print JSON instead of a summary (the exit status is the same).
        #[arg(long)]
        json: bool,
    },
    /// Open a damaged store past its damage: keep every intact message, move the damaged
    /// files aside, list what was lost.
    #[command(
        after_help = "In place (the default), the salvaged store replaces the damaged one, whose \
files go to DIR/damaged-<unix time>/ untouched, with salvage-report.txt. With --into NEW, DIR is \
left as it is and the salvaged store is written to NEW. A healthy store is opened as it is.\n\n\
Each lost message is listed by id (and queue, where a surviving record names it); \"may be \
redelivered\" means it was kept but a damaged range may have held its ack. Ranges whose ids \
cannot be named one by one are listed with the id span they could hold.\n\nExamples:\n  \
wharf verify ./jobs-data            see the damage first\n  wharf salvage ./jobs-data --into \
./jobs-salvaged\n  wharf salvage ./jobs-data --json | jq '.lost[]'"
    )]
    Salvage {
        /// The store directory.
        dir: PathBuf,
        /// Write the salvaged store into this new (empty) directory and leave DIR untouched.
        #[arg(long)]
        into: Option<PathBuf>,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Write a queue's waiting messages as JSON lines (payloads in base64) to standard output.
    #[command(
        after_help = "Each line: {\"payload\": base64, \"priority\": 0-9, and when set \"due_ms\", \
\"expires_ms\" (Unix ms), \"dedup_key\" (base64)}. Ids, attempts and dead-letter notes are not \
exported: an import makes new messages.\n\nExamples:\n  wharf export ./jobs-data mail > mail.jsonl\n  wharf export ./jobs-data mail | jq -r .payload | head"
    )]
    Export {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
    },
    /// Push the messages of a `wharf export` file (standard input) into a queue.
    #[command(
        after_help = "Examples:\n  wharf import ./new-data mail < mail.jsonl\n  wharf export ./a mail | wharf import ./b mail"
    )]
    Import {
        /// The store directory (created if it does not exist).
        dir: PathBuf,
        /// The queue (created if it does not exist).
        queue: String,
    },
    /// Measure this disk's fsync floor and wharf's throughput on it.
    #[command(after_help = "Examples:\n  wharf bench --quick\n  wharf bench --dir /mnt/fast-disk")]
    Bench {
        /// Where to make the temporary stores (default: $TMPDIR, else the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A few seconds instead of about half a minute.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Move dead letters of QUEUE back to it, attempts counted from zero.
    #[command(
        after_help = "Examples:\n  wharf dlq requeue ./jobs-data mail --all\n  wharf dlq requeue ./jobs-data mail 0000010000000007 0000010000000009"
    )]
    Requeue {
        /// The store directory.
        dir: PathBuf,
        /// The queue whose dead letters to requeue (or its dead-letter queue itself).
        queue: String,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Message ids as `peek --dead` shows them (hex).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("wharf: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Stats { dir, json } => inspect::stats(&dir, json),
        Command::Peek { dir, queue, count, dead, raw } => {
            inspect::peek(&dir, &queue, count, dead, raw)
        }
        Command::Push { dir, queue, payload, delay, priority, key, lines } => {
            let opts = operate::PushArgs { delay, priority, key, lines };
            operate::push(&dir, &queue, payload, &opts)
        }
        Command::Pop { dir, queue, ack } => operate::pop(&dir, &queue, ack),
        Command::Dlq { command: DlqCommand::Requeue { dir, queue, all, ids } } => {
            operate::requeue(&dir, &queue, all, &ids)
        }
        Command::Purge { dir, queue, yes } => operate::purge(&dir, &queue, yes),
        Command::Verify { dir, json } => verify::verify(&dir, json),
        Command::Salvage { dir, into, json } => salvage::salvage(&dir, into.as_deref(), json),
        Command::Export { dir, queue } => transfer::export(&dir, &queue),
        Command::Import { dir, queue } => transfer::import(&dir, &queue),
        Command::Bench { dir, quick } => bench::bench(dir, quick),
    }
}
