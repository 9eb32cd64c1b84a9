//! The `wharf` command, driven as a subprocess over real directories: output, exit codes,
//! JSON, the export/import round trip, verify on damage, a locked and a missing store.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use wharf::{PushOptions, Wharf};

/// What a run of the command gave.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts the exit code, showing the output when it is not the one expected.
    fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "stdout: {}\nstderr: {}", self.out(), self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        self
    }
}

/// How long one run of the command may take before it counts as hung (the `bench` runs
/// included).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `wharf args...` with `input` on standard input (empty if `None`). A run that does not
/// end within `RUN_LIMIT` is killed and fails the test, naming the command.
fn wharf(args: &[&str], input: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(bytes) = input {
            let _ = stdin.write_all(&bytes);
        }
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`wharf {}` did not end within {RUN_LIMIT:?}: hung", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_shows_every_command_with_examples() {
    let run = wharf(&["--help"], None).expect(0);
    let help = run.out();
    for cmd in [
        "stats", "peek", "push", "pop", "dlq", "purge", "verify", "salvage", "export", "import",
        "bench",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    assert!(help.contains("Examples:") && help.contains("Exit status"), "{help}");
    for cmd in
        ["stats", "peek", "push", "pop", "purge", "verify", "salvage", "export", "import", "bench"]
    {
        let help = wharf(&[cmd, "--help"], None).expect(0).out();
        assert!(help.contains("Examples:\n  wharf "), "{cmd} --help:\n{help}");
    }
    assert!(wharf(&["dlq", "requeue", "--help"], None).expect(0).out().contains("Examples:"));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    wharf(&[], None).expect(2);
    wharf(&["frobnicate"], None).expect(2);
    wharf(&["peek", s(&store)], None).expect(2);
    wharf(&["push", s(&store), "q", "x", "--priority", "12"], None).expect(2);
    wharf(&["push", s(&store), "q", "x", "--delay", "soon"], None).expect(2);
    wharf(&["push", s(&store), "q", "x", "--lines"], None).expect(2);
    wharf(&["dlq", "requeue", s(&store), "q"], None).expect(2);
    let run = wharf(&["push", s(&store), "no spaces", "x"], None).expect(2);
    assert!(run.stderr.contains("invalid queue name"), "{}", run.stderr);
    assert!(!store.exists(), "a bad argument created the store");
    wharf(&["push", s(&store), "q", "x"], None).expect(0);
    let run = wharf(&["dlq", "requeue", s(&store), "q", "zz-not-hex"], None).expect(2);
    assert!(run.stderr.contains("not a message id"), "{}", run.stderr);
    let run = wharf(&["peek", s(&store), "nope"], None).expect(2);
    assert!(run.stderr.contains("no queue named \"nope\""), "{}", run.stderr);
}

#[test]
fn absurd_numbers_are_usage_errors_or_saturate_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    // Delays of 0 and 1 work (ready at once: less than a millisecond).
    for delay in ["0", "0ms", "1ms", "0.0001ms", "1"] {
        wharf(&["push", d, "q", "soon", &format!("--delay={delay}")], None).expect(0);
    }
    // The message delayed by a second is due by this instant.
    let due = std::time::Instant::now() + std::time::Duration::from_secs(1);
    // Too long for a `Duration`, negative, or not a number: a usage error naming the flag.
    for delay in
        ["99999999999999999999d", "18446744073709551616", "1e400", "inf", "nan", "-1s", "1y", ""]
    {
        let run = wharf(&["push", d, "q", "x", &format!("--delay={delay}")], None).expect(2);
        assert!(run.stderr.contains("--delay"), "{delay}: {}", run.stderr);
    }
    // Long enough to pass any date, yet a `Duration`: saturates to the far future.
    wharf(&["push", d, "q", "never", "--delay", "100000000000000d"], None).expect(0);
    let peek = wharf(&["peek", d, "q", "-n", "18446744073709551615"], None).expect(0).out();
    // The message delayed by a second may still be delayed on a slow machine.
    let ok = ["q: 5 ready, 1 delayed", "q: 4 ready, 2 delayed"].iter().any(|p| peek.starts_with(p));
    assert!(ok && peek.contains("0 in flight; showing 6"), "{peek}");
    assert!(wharf(&["peek", d, "q", "-n", "0"], None).expect(0).out().contains("showing 0"));
    for n in ["18446744073709551616", "-1", "many"] {
        wharf(&["peek", d, "q", "-n", n], None).expect(2);
    }
    wharf(&["stats", d], None).expect(0);
    wharf(&["stats", d, "--json"], None).expect(0);
    // Five are ready once the one delayed by a second is due (the commands above may take
    // less than that).
    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    for _ in 0..5 {
        wharf(&["pop", d, "q", "--ack"], None).expect(0);
    }
    wharf(&["pop", d, "q"], None).expect(3);
    // The far-future due time survives an export and an import.
    let export = wharf(&["export", d, "q"], None).expect(0);
    let line: Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(line["due_ms"], u64::MAX, "{line}");
    let other = dir.path().join("other");
    wharf(&["import", s(&other), "q"], Some(&export.stdout)).expect(0);
    assert_eq!(wharf(&["export", s(&other), "q"], None).expect(0).stdout, export.stdout);
    // Import lines at the edges: times at 0 and u64::MAX work; past u64 is a bad line.
    let edges = b"{\"payload\":\"YQ==\",\"due_ms\":0,\"expires_ms\":18446744073709551615}\n\
        {\"payload\":\"Yg==\",\"expires_ms\":0}\n";
    wharf(&["import", s(&other), "edges"], Some(edges)).expect(0);
    for bad in [
        &b"{\"payload\":\"YQ==\",\"due_ms\":18446744073709551616}"[..],
        b"{\"payload\":\"YQ==\",\"expires_ms\":-1}",
        b"{\"payload\":\"YQ==\",\"priority\":256}",
        b"{\"payload\":\"YQ==\",\"priority\":10}",
    ] {
        let run = wharf(&["import", s(&other), "edges"], Some(bad)).expect(1);
        assert!(run.stderr.contains("line 1"), "{}", run.stderr);
    }
    // Message ids: the largest is looked for, one digit more is a usage error.
    wharf(&["dlq", "requeue", d, "q", "ffffffffffffffff"], None).expect(1);
    wharf(&["dlq", "requeue", d, "q", "10000000000000000"], None).expect(2);
}

#[test]
fn a_regular_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a store").unwrap();
    for args in
        [&["push", s(&file), "q", "x"][..], &["stats", s(&file)], &["import", s(&file), "q"]]
    {
        let run = wharf(args, Some(b"")).expect(2);
        assert!(run.stderr.contains("not a directory"), "{args:?}: {}", run.stderr);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store");
}

#[test]
fn read_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let commands: [&[&str]; 7] = [
        &["stats"],
        &["peek", "q"],
        &["pop", "q"],
        &["verify"],
        &["export", "q"],
        &["purge", "q", "--yes"],
        &["dlq", "requeue", "q", "--all"],
    ];
    for cmd in commands {
        for (d, says) in [(&missing, "no such directory"), (&empty, "no wharf store")] {
            let mut args = vec![cmd[0]];
            if cmd[0] == "dlq" {
                args.push(cmd[1]);
                args.push(s(d));
                args.extend(&cmd[2..]);
            } else {
                args.push(s(d));
                args.extend(&cmd[1..]);
            }
            let run = wharf(&args, None).expect(2);
            assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
            assert!(run.stderr.starts_with("wharf: "), "{}", run.stderr);
        }
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn push_peek_and_pop() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let id = wharf(&["push", d, "mail", "to: ada"], None).expect(0).out();
    assert_eq!(id.trim().len(), 16, "{id}");
    wharf(&["push", d, "mail"], Some(&[0u8, 1, 2, 0xff])).expect(0);
    let run = wharf(&["push", d, "mail", "--lines"], Some(b"one\r\ntwo\n\nthree")).expect(0);
    assert_eq!(run.out().lines().count(), 3);
    wharf(&["push", d, "mail", "later", "--delay", "1h", "--priority", "7", "--key", "k"], None)
        .expect(0);
    wharf(&["push", d, "mail", "urgent", "--priority", "9"], None).expect(0);

    let peek = wharf(&["peek", d, "mail", "-n", "10"], None).expect(0).out();
    assert!(peek.starts_with("mail: 6 ready, 1 delayed, 0 in flight; showing 7"), "{peek}");
    let rows: Vec<&str> = peek.lines().skip(2).collect();
    assert!(rows[0].contains("urgent") && rows[0].contains(" 9 "), "{peek}");
    assert!(rows[1].contains(id.trim()) && rows[1].ends_with("to: ada"), "{peek}");
    assert!(rows[2].ends_with("hex:000102ff"), "{peek}");
    assert!(rows[6].contains("later") && rows[6].matches('Z').count() == 2, "{peek}");
    let head = wharf(&["peek", d, "mail", "-n", "2", "--raw"], None).expect(0);
    assert_eq!(head.stdout, b"urgent\nto: ada\n");

    // Without --ack the lease ends with the command: ready again, one attempt counted.
    let run = wharf(&["pop", d, "mail"], None).expect(0);
    assert_eq!(run.stdout, b"urgent");
    assert!(run.stderr.contains("released"), "{}", run.stderr);
    let peek = wharf(&["peek", d, "mail", "-n", "1"], None).expect(0).out();
    assert!(peek.lines().nth(2).unwrap().contains("        1  "), "{peek}");
    assert_eq!(wharf(&["pop", d, "mail", "--ack"], None).expect(0).stdout, b"urgent");
    for want in [&b"to: ada"[..], &[0, 1, 2, 0xff], b"one", b"two", b"three"] {
        assert_eq!(wharf(&["pop", d, "mail", "--ack"], None).expect(0).stdout, want);
    }
    let run = wharf(&["pop", d, "mail", "--ack"], None).expect(3);
    assert!(run.stdout.is_empty() && run.stderr.contains("no ready message"), "{}", run.stderr);
}

/// A store with queue `mail` holding a delayed message and two dead letters in `mail.dlq`,
/// queue `logs` holding 3 messages.
fn store_with_dead_letters(dir: &Path) -> Vec<String> {
    let w = Wharf::open(dir).unwrap();
    let mail = w.queue("mail").unwrap();
    mail.push_batch(["bounce 1", "bounce 2"]).unwrap();
    let mut dead = Vec::new();
    for _ in 0..2 {
        let d = mail.pop().unwrap();
        dead.push(d.id().to_string());
        d.dead_letter("smtp 550").unwrap();
    }
    mail.push_with(b"tomorrow", PushOptions::new().delay(Duration::from_secs(86_400))).unwrap();
    w.queue("logs").unwrap().push_batch(["a", "bb", "ccc"]).unwrap();
    drop(mail);
    w.close().unwrap();
    dead
}

#[test]
fn stats_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    store_with_dead_letters(dir.path());
    let table = wharf(&["stats", s(dir.path())], None).expect(0).out();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("store ") && lines[0].contains("format version"), "{table}");
    assert!(lines[1].starts_with("queue ") && lines[1].contains("in flight"), "{table}");
    let mail = lines.iter().find(|l| l.starts_with("mail ")).unwrap();
    let cols: Vec<&str> = mail.split_whitespace().collect();
    assert_eq!(&cols[..5], ["mail", "0", "1", "0", "2"], "{table}");

    let run = wharf(&["stats", s(dir.path()), "--json"], None).expect(0);
    let doc: Value = serde_json::from_slice(&run.stdout).unwrap();
    let store = &doc["store"];
    assert_eq!(store["format_version"], wharf::FORMAT_VERSION);
    // The active segment at least; its spares are made by the background thread, which may
    // not have run yet when `stats` reads the store.
    assert!(store["segments"].as_u64().unwrap() >= 1);
    assert!(store["disk_bytes"].as_u64().unwrap() > 0);
    assert!(store["checkpoint_lsn"].is_u64() && store["durable_lsn"].as_u64().unwrap() > 0);
    let queues = doc["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mail", "mail.dlq", "logs"]);
    let mail = &queues[0];
    assert_eq!((mail["ready"].as_u64(), mail["delayed"].as_u64()), (Some(0), Some(1)));
    assert_eq!(mail["in_flight"], 0);
    assert_eq!(
        (mail["dead_letter_queue"].as_str(), mail["dead_lettered"].as_u64()),
        (Some("mail.dlq"), Some(2))
    );
    assert_eq!(mail["bytes"], 8);
    // The oldest message of the dead-letter queue keeps the time of its push.
    assert_eq!(queues[1]["ready"], 2);
    assert_eq!(queues[1]["bytes"], 16);
    assert!(queues[1]["oldest_age_ms"].as_u64().is_some_and(|age| age < 60_000));
    assert!(queues[1]["oldest_id"].is_string());
    let age = mail["oldest_age_ms"].as_u64().unwrap();
    assert!(age < 60_000, "{age}");
    let logs = &queues[2];
    assert_eq!((logs["ready"].as_u64(), logs["bytes"].as_u64()), (Some(3), Some(6)));
}

#[test]
fn dead_letters_peeked_and_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let dead = store_with_dead_letters(dir.path());
    let peek = wharf(&["peek", d, "mail", "--dead"], None).expect(0).out();
    assert!(peek.starts_with("mail.dlq: 2 ready"), "{peek}");
    assert!(peek.contains("[from mail: dead-lettered by a consumer]"), "{peek}");
    assert!(peek.contains("[last error: smtp 550]"), "{peek}");
    let logs = wharf(&["peek", d, "logs", "--dead"], None).expect(0);
    assert!(logs.stderr.contains("no dead letters"), "{}", logs.stderr);

    let run = wharf(&["dlq", "requeue", d, "mail", &dead[1]], None).expect(0);
    assert!(run.out().contains("requeued 1 "), "{}", run.out());
    let run = wharf(&["dlq", "requeue", d, "mail", &dead[1]], None).expect(1);
    assert!(run.stderr.contains("not dead letters"), "{}", run.stderr);
    // The dead-letter queue itself may be named too.
    let run = wharf(&["dlq", "requeue", d, "mail.dlq", "--all"], None).expect(0);
    assert!(run.out().contains("requeued 1 "), "{}", run.out());
    let run = wharf(&["dlq", "requeue", d, "mail", "--all"], None).expect(0);
    assert!(run.out().contains("requeued 0 "), "{}", run.out());
    let doc: Value =
        serde_json::from_slice(&wharf(&["stats", d, "--json"], None).expect(0).stdout).unwrap();
    assert_eq!(doc["queues"][0]["ready"], 2);
    assert_eq!(doc["queues"][0]["dead_lettered"], 0);
}

#[test]
fn purge_asks_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    store_with_dead_letters(dir.path());
    let run = wharf(&["purge", d, "logs"], Some(b"n\n")).expect(1);
    assert!(
        run.stderr.contains("remove the 3 waiting messages")
            && run.stderr.contains("nothing removed")
    );
    wharf(&["purge", d, "logs"], None).expect(1); // no answer is no
    let run = wharf(&["purge", d, "logs"], Some(b"yes\n")).expect(0);
    assert!(run.out().contains("purged 3 messages"), "{}", run.out());
    let run = wharf(&["purge", d, "mail", "--yes"], None).expect(0);
    assert!(run.out().contains("purged 1 messages"), "{}", run.out());
    let doc: Value =
        serde_json::from_slice(&wharf(&["stats", d, "--json"], None).expect(0).stdout).unwrap();
    let total: u64 = doc["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["ready"].as_u64().unwrap() + q["delayed"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "the dead letters stay: {doc}");
}

#[test]
fn export_then_import_then_export_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let all_bytes: Vec<u8> = (0..=255).collect();
    let far = SystemTime::UNIX_EPOCH + Duration::from_millis(4_102_444_800_123);
    {
        let w = Wharf::open(&a).unwrap();
        let q = w.queue("jobs").unwrap();
        q.push(b"plain text").unwrap();
        q.push(&all_bytes).unwrap();
        q.push(b"").unwrap();
        q.push_with("ünïcödé", PushOptions::new().priority(4)).unwrap();
        q.push_with(b"later", PushOptions::new().delay(Duration::from_secs(86_400))).unwrap();
        q.push_with(b"expiring", PushOptions::new().expires_at(far).dedup_key([7u8, 0])).unwrap();
        q.push_batch((0..2000).map(|i| format!("bulk {i}"))).unwrap();
        drop(q);
        w.close().unwrap();
    }
    let first = wharf(&["export", s(&a), "jobs"], None).expect(0);
    assert!(first.stderr.contains("exported 2006 messages"), "{}", first.stderr);
    let lines: Vec<Value> = first
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2006);
    let payload = |v: &Value| STANDARD.decode(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload(&lines[0]), "ünïcödé".as_bytes());
    assert_eq!(lines[0]["priority"], 4);
    assert_eq!(payload(&lines[2]), all_bytes);
    assert_eq!(payload(&lines[3]), b"");
    assert_eq!(lines[4]["expires_ms"], 4_102_444_800_123u64);
    assert_eq!(STANDARD.decode(lines[4]["dedup_key"].as_str().unwrap()).unwrap(), [7, 0]);
    assert!(lines[2005]["due_ms"].is_u64() && payload(&lines[2005]) == b"later");

    let run = wharf(&["import", s(&b), "jobs"], Some(&first.stdout)).expect(0);
    assert!(run.stderr.contains("imported 2006 messages"), "{}", run.stderr);
    let second = wharf(&["export", s(&b), "jobs"], None).expect(0);
    assert!(first.stdout == second.stdout, "the second export differs");

    let run =
        wharf(&["import", s(&b), "jobs"], Some(b"{\"payload\":\"YQ==\"}\nnot json\n")).expect(1);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);
    let again = wharf(&["export", s(&b), "jobs"], None).expect(0);
    assert!(again.stdout == first.stdout, "a bad file imported something");
}

#[test]
fn verify_counts_batch_acks() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    {
        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("jobs").unwrap();
        q.push_batch((0..5).map(|i| format!("job {i}"))).unwrap();
        let batch = q.pop_batch(3, Duration::ZERO).unwrap();
        assert_eq!(q.ack_many(batch).unwrap().acked, 3);
        drop(q);
        w.close().unwrap();
    }
    let run = wharf(&["verify", d], None).expect(0);
    assert!(run.out().contains("0 acks, 1 batch acks"), "{}", run.out());
    assert!(run.out().contains("jobs: 2 ready"), "{}", run.out());
    let doc: Value =
        serde_json::from_slice(&wharf(&["verify", d, "--json"], None).expect(0).stdout).unwrap();
    assert_eq!(
        (doc["records"]["acks"].as_u64(), doc["records"]["ack"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    {
        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("jobs").unwrap();
        for i in 0..50 {
            q.push(format!("message number {i:04} with some padding to make it longer")).unwrap();
        }
        drop(q);
        w.close().unwrap();
    }
    let run = wharf(&["verify", d], None).expect(0);
    assert!(run.out().contains("healthy: no problem found"), "{}", run.out());
    assert!(!run.out().contains("salvage"), "no hint for a healthy store: {}", run.out());
    assert!(run.out().contains("jobs: 50 ready"), "{}", run.out());
    let doc: Value =
        serde_json::from_slice(&wharf(&["verify", d, "--json"], None).expect(0).stdout).unwrap();
    let pushes = doc["records"]["push_ex"].as_u64();
    assert_eq!((doc["healthy"].as_bool(), pushes), (Some(true), Some(50)));
    assert_eq!(doc["queues"][0]["ready"], 50);
    assert_eq!(doc["problems"].as_array().map(Vec::len), Some(0));

    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let seg = &segs[0];
    let mut bytes = std::fs::read(seg).unwrap();
    // A byte inside a payload: the record's checksum fails, its header still reads right.
    let at = bytes.windows(19).position(|w| w == b"message number 0010").unwrap();
    bytes[at + 5] ^= 0x40;
    std::fs::write(seg, &bytes).unwrap();
    let name = seg.file_name().unwrap().to_str().unwrap();

    let run = wharf(&["verify", d], None).expect(1);
    assert!(run.out().contains("DAMAGED: "), "{}", run.out());
    assert!(run.out().contains(name), "{}", run.out());
    assert!(run.out().contains("checksum mismatch in the record at log position"), "{}", run.out());
    let hint = format!("`wharf salvage {d}` keeps the intact messages and lists the lost ones");
    assert!(run.out().contains(&hint), "{}", run.out());
    let run = wharf(&["verify", d, "--json"], None).expect(1);
    let doc: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(doc["healthy"], false);
    let problem = &doc["problems"][0];
    assert!(problem["file"].as_str().unwrap().ends_with(name), "{doc}");
    assert!(problem["offset"].is_u64() && problem["reason"].is_string(), "{doc}");
    let run = wharf(&["stats", d], None).expect(1);
    assert!(run.stderr.contains("is corrupt") && run.stderr.contains(name), "{}", run.stderr);
    assert!(run.stderr.contains("at offset"), "{}", run.stderr);
}

#[test]
fn salvage_keeps_the_intact_messages_and_lists_the_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    {
        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("jobs").unwrap();
        for i in 0..50 {
            q.push(format!("message number {i:04} with some padding to make it longer")).unwrap();
        }
        drop(q);
        w.close().unwrap();
    }
    let seg = dir.path().join("log").join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[1040] ^= 0x40; // in a payload
    std::fs::write(&seg, &bytes).unwrap();
    let run = wharf(&["stats", d], None).expect(1);
    assert!(run.stderr.contains("wharf salvage"), "{}", run.stderr);

    // Into a new directory: the damaged store stays as it is.
    let new = tempfile::tempdir().unwrap();
    let into = new.path().join("salvaged");
    let run = wharf(&["salvage", d, "--into", s(&into), "--json"], None).expect(0);
    let doc: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!((doc["salvaged"].as_bool(), doc["kept"].as_u64()), (Some(true), Some(49)), "{doc}");
    // The damaged push, by id (its bytes still read as that one push: no ack was lost with it).
    let lost = doc["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{doc}");
    assert_eq!((lost[0]["fate"].as_str(), lost[0]["queue"].as_str()), (Some("lost"), None));
    assert_eq!(lost[0]["id"], doc["lost_ranges"][0]["ids"]["first"], "{doc}");
    assert_eq!(doc["lost_ranges"][0]["ids"]["kind"], "exact", "{doc}");
    assert!(doc["damaged_dir"].is_null());
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "left untouched");
    wharf(&["verify", s(&into)], None).expect(0);
    assert!(wharf(&["stats", s(&into)], None).expect(0).out().contains("jobs"));

    // In place: the damaged files move aside, the store is healthy again.
    let run = wharf(&["salvage", d], None).expect(0);
    let out = run.out();
    assert!(out.contains("kept 49 messages; 1 lost"), "{out}");
    assert!(out.contains("damaged files moved to"), "{out}");
    assert!(out.contains("lost: message"), "{out}");
    wharf(&["verify", d], None).expect(0);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let moved = dir.path().join(&aside[0]);
    assert_eq!(std::fs::read(moved.join("log/00000000000000000000.seg")).unwrap(), bytes);
    let report = std::fs::read_to_string(moved.join("salvage-report.txt")).unwrap();
    assert!(report.contains("message\t") && report.contains("\tlost\t"), "{report}");
    // Once healthy, salvage only opens it.
    let out = wharf(&["salvage", d], None).expect(0).out();
    assert!(out.contains("healthy; opened as it was"), "{out}");
    let doc: Value =
        serde_json::from_slice(&wharf(&["salvage", d, "--json"], None).expect(0).stdout).unwrap();
    assert_eq!(doc["salvaged"], false);
    assert!(wharf(&["salvage", "/nonexistent/wharf"], None).expect(2).stderr.contains("no such"));
}

#[test]
fn a_store_held_by_a_running_application_is_reported_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let w = Wharf::open(dir.path()).unwrap();
    w.queue("jobs").unwrap().push(b"x").unwrap();
    for args in
        [&["stats", d][..], &["peek", d, "jobs"], &["push", d, "jobs", "y"], &["pop", d, "jobs"]]
    {
        let run = wharf(args, None).expect(1);
        assert!(run.stderr.contains("in use by another process"), "{args:?}: {}", run.stderr);
    }
    // verify takes no lock.
    wharf(&["verify", d], None).expect(0);
    w.close().unwrap();
    wharf(&["stats", d], None).expect(0);
}

#[test]
fn bench_quick_prints_the_floor_and_the_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let run = wharf(&["bench", "--quick", "--dir", s(dir.path())], None).expect(0);
    let out = run.out();
    for row in
        ["F_sync", "push, 1 thread", "push, 4 threads", "push_batch of 64", "push + pop + ack"]
    {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.contains("× F_sync") && out.contains("(--dir)"), "{out}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch directory stays");
    wharf(&["bench", "--quick", "--dir", s(&dir.path().join("nope"))], None).expect(2);
}

#[test]
fn a_closed_pipe_ends_an_export_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let lines: Vec<u8> = (0..20_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    wharf(&["push", d, "q", "--lines"], Some(&lines)).expect(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["export", d, "q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take()); // like `| head -c 16`
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("wharf:"), "{stderr}");
}

#[test]
fn a_repair_made_by_opening_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let w = Wharf::open(dir.path()).unwrap();
        w.queue("jobs").unwrap().push(b"kept").unwrap();
        let end = w.stats().durable_lsn;
        w.close().unwrap();
        end
    };
    // As if the process had died writing: no clean-close mark, garbage past the durable end.
    std::fs::remove_file(dir.path().join("log").join("mark")).unwrap();
    let seg = dir.path().join("log").join(format!("{:020}.seg", 0));
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB; 40], end).unwrap();
    drop(file);
    let run = wharf(&["peek", s(dir.path()), "jobs"], None).expect(0);
    assert!(run.stderr.contains("cut a torn write of 40 bytes"), "{}", run.stderr);
    assert!(run.out().contains("kept"), "{}", run.out());
    let run = wharf(&["peek", s(dir.path()), "jobs"], None).expect(0);
    assert!(!run.stderr.contains("torn"), "{}", run.stderr);
}
