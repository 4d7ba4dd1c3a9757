//! Following a daemon's events (`usernet ctl --json events`) from a test.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Child;
use super::daemon::{BIN, Daemon};

/// `usernet ctl events --json` as a child whose stdout lines arrive on the receiver.
pub fn follow(d: &Daemon) -> (Child, mpsc::Receiver<Value>) {
    let mut c = Command::new(BIN)
        .args(["ctl", "--json", "--socket"])
        .arg(d.sock())
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .expect("usernet ctl events");
    let out = c.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    (Child(c), rx)
}

/// The next event of one of `kinds` (others are skipped), within 5 s.
pub fn next_of(rx: &mpsc::Receiver<Value>, kinds: &[&str], d: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {kinds:?} event within 5 s\n{}", d.log()));
        if kinds.contains(&v["event"].as_str().unwrap_or_default()) {
            return v;
        }
    }
}

/// Subscribes on the control socket directly (`{"op":"subscribe"}`) and returns once the
/// daemon has answered, so every event after this call arrives on the receiver (unlike
/// [`follow`], whose child may subscribe late). The stream ends when the receiver is dropped
/// and the daemon writes again, or when the daemon ends.
pub fn subscribe(d: &Daemon) -> mpsc::Receiver<Value> {
    let conn = std::os::unix::net::UnixStream::connect(d.sock()).expect("control socket");
    (&conn)
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .expect("subscribe");
    let mut rd = BufReader::new(conn);
    let mut answer = String::new();
    rd.read_line(&mut answer).expect("subscribe answer");
    assert!(answer.contains("\"subscribed\":true"), "{answer}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in rd.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}
