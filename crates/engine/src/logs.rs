//! Reading `container.log` (docker json-file lines) back: `logs`,
//! `--tail N`, `-f` follow until the container exits.

use anyhow::Result;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Deserialize)]
struct Line {
    log: String,
    stream: String,
}

fn parse(l: &str) -> Option<Line> {
    serde_json::from_str(l).ok()
}

/// The last `n` lines of output as plain text (for error messages).
pub fn tail_text(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<_> = s.lines().filter_map(parse).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.log.as_str())
        .collect()
}

fn emit(l: &Line) {
    if l.stream == "stderr" {
        let _ = std::io::stderr().write_all(l.log.as_bytes());
    } else {
        let mut o = std::io::stdout();
        let _ = o.write_all(l.log.as_bytes());
        let _ = o.flush();
    }
}

pub fn print(
    p: &Path,
    tail: Option<usize>,
    follow: bool,
    mut running: impl FnMut() -> bool,
) -> Result<()> {
    let f = std::fs::File::open(p)?;
    let mut r = std::io::BufReader::new(f);
    let mut all = Vec::new();
    let mut buf = String::new();
    while r.read_line(&mut buf)? > 0 {
        if buf.ends_with('\n') {
            if let Some(l) = parse(&buf) {
                all.push(l);
            }
            buf.clear();
        } else {
            break;
        }
    }
    let skip = tail.map(|n| all.len().saturating_sub(n)).unwrap_or(0);
    for l in &all[skip..] {
        emit(l);
    }
    if !follow {
        return Ok(());
    }
    loop {
        let n = r.read_line(&mut buf)?;
        if n > 0 && buf.ends_with('\n') {
            if let Some(l) = parse(&buf) {
                emit(&l);
            }
            buf.clear();
            continue;
        }
        if !running() {
            // Drain what was written before the exit was recorded.
            while r.read_line(&mut buf)? > 0 {
                if buf.ends_with('\n') {
                    if let Some(l) = parse(&buf) {
                        emit(&l);
                    }
                    buf.clear();
                }
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
