//! `usernet ctl events`: the daemon's events (`{"op":"subscribe"}`), one line each, until
//! Ctrl-C, `--count`, or the daemon ends the stream (it stops, or drops this subscriber for
//! falling behind).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use usernet::control::api::Request;

/// `usernet ctl events [--count N]`; `json`: the events as the daemon sends them (one JSON
/// object per line), else `TIME EVENT key=value...`.
pub(crate) fn run(sock: &Path, count: Option<u64>, json: bool) -> anyhow::Result<()> {
    let conn =
        UnixStream::connect(sock).with_context(|| format!("control socket {}", sock.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(&Request::Subscribe {})?;
    line.push('\n');
    (&conn).write_all(line.as_bytes())?;
    let mut rd = BufReader::new(&conn);
    let mut answer = String::new();
    rd.read_line(&mut answer)
        .context("reading the daemon's answer")?;
    let v: Value = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon's answer: {answer:?}"))?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        let msg = v.get("error").and_then(Value::as_str).unwrap_or("refused");
        bail!("subscribe: {msg}");
    }
    // Events may be rare: wait for them as long as it takes (Ctrl-C ends the process).
    conn.set_read_timeout(None)?;
    let mut out = io::stdout().lock();
    let mut seen = 0u64;
    for l in rd.lines() {
        let l = l.context("reading events")?;
        if l.trim().is_empty() {
            continue;
        }
        let text = if json { l } else { human(&l) };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(()); // The reader went (head, a closed pipe).
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// `HH:MM:SS.mmm EVENT key=value...` (UTC) for one event line; the line as it is if it does
/// not parse.
fn human(line: &str) -> String {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let ts = m.get("ts").and_then(Value::as_f64).unwrap_or(0.0);
    let day_ms = ((ts * 1000.0) as u64) % 86_400_000;
    let mut s = format!(
        "{:02}:{:02}:{:02}.{:03} {}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
        m.get("event").and_then(Value::as_str).unwrap_or("?")
    );
    for (k, v) in &m {
        if matches!(k.as_str(), "ts" | "seq" | "event") {
            continue;
        }
        match v {
            Value::String(x) => s.push_str(&format!(" {k}={x}")),
            other => s.push_str(&format!(" {k}={other}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_lines() {
        assert_eq!(
            human(
                r#"{"seq":3,"ts":3661.5,"event":"port_added","port":"web","network":"n","kind":"tap"}"#
            ),
            "01:01:01.500 port_added kind=tap network=n port=web"
        );
        assert_eq!(human("not json"), "not json");
    }
}
