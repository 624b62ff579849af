//! A small blocking HTTP/1.1 client for the daemon's API (Unix socket, or
//! TCP with a bearer token): one connection per request, chunked bodies
//! decoded (Server-Sent Events arrive chunked), long-running tasks awaited.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: Option<String> },
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "daemon answered {} with non-JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

impl Client {
    pub fn unix(p: impl Into<PathBuf>) -> Client {
        Client {
            endpoint: Endpoint::Unix(p.into()),
        }
    }

    fn connect(&self) -> Result<Box<dyn Conn>> {
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => Box::new(UnixStream::connect(p).with_context(|| {
                format!(
                    "cannot connect to ferrod at {} (is the daemon running? `ferro daemon`)",
                    p.display()
                )
            })?),
            Endpoint::Tcp { addr, .. } => Box::new(
                std::net::TcpStream::connect(addr)
                    .with_context(|| format!("cannot connect to ferrod at {addr}"))?,
            ),
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        ctype: Option<&str>,
        body: &[u8],
    ) -> Result<BufReader<Box<dyn Conn>>> {
        let mut c = self.connect()?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: ferrod\r\nConnection: close\r\n");
        if let Endpoint::Tcp { token: Some(t), .. } = &self.endpoint {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(ct) = ctype {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        c.write_all(req.as_bytes())?;
        // The daemon may answer (413) and close before reading a huge body:
        // read its answer anyway.
        let _ = c.write_all(body).and_then(|_| c.flush());
        Ok(BufReader::new(c))
    }

    /// Reads the status line and headers; returns (status, chunked, length).
    fn head(r: &mut impl BufRead) -> Result<(u16, bool, Option<usize>)> {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {line:?}"))?;
        let (mut chunked, mut len) = (false, None);
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    len = v.parse().ok();
                }
            }
        }
        Ok((status, chunked, len))
    }

    /// Reads one chunk of a chunked body; None at the end.
    fn chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if n == 0 {
            return Ok(None);
        }
        let mut buf = vec![0; n.min(64 << 20)];
        r.read_exact(&mut buf)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        Ok(Some(buf))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        ctype: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let mut r = self.send(method, path, ctype, body)?;
        let (status, chunked, len) = Self::head(&mut r)?;
        let mut out = Vec::new();
        if chunked {
            while let Some(c) = Self::chunk(&mut r)? {
                out.extend_from_slice(&c);
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            r.read_exact(&mut out)?;
        } else {
            r.read_to_end(&mut out)?;
        }
        Ok(Response { status, body: out })
    }

    /// A JSON request; a non-2xx answer becomes an error carrying the
    /// daemon's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let b = body.map(|b| b.to_string()).unwrap_or_default();
        let r = self.request(method, path, body.map(|_| "application/json"), b.as_bytes())?;
        Self::check(r)
    }

    pub fn check(r: Response) -> Result<Value> {
        if !(200..300).contains(&r.status) {
            let msg = r
                .json()
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| r.text());
            bail!("{msg}");
        }
        if r.body.is_empty() {
            return Ok(Value::Null);
        }
        r.json()
    }

    /// Calls, then waits for the task the answer names (if any); returns the
    /// task's result or its error.
    pub fn call_wait(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let v = self.call(method, path, body)?;
        let Some(id) = v.get("task").and_then(Value::as_u64) else {
            return Ok(v);
        };
        self.wait_task(id)
    }

    pub fn wait_task(&self, id: u64) -> Result<Value> {
        loop {
            let t = self.call("GET", &format!("/v1/tasks/{id}?wait=60"), None)?;
            match t.get("state").and_then(Value::as_str) {
                Some("done") => return Ok(t.get("result").cloned().unwrap_or(Value::Null)),
                Some("failed") => bail!(
                    "{}",
                    t.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("task failed")
                ),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Follows `/v1/events` and calls `f(event, data)` for each event until
    /// it returns false.
    pub fn events(&self, query: &str, mut f: impl FnMut(&str, &str) -> bool) -> Result<()> {
        let mut r = self.send("GET", &format!("/v1/events{query}"), None, b"")?;
        let (status, chunked, _) = Self::head(&mut r)?;
        if status != 200 {
            bail!("the daemon refused the event stream ({status})");
        }
        let (mut pending, mut event, mut data) = (Vec::<u8>::new(), String::new(), String::new());
        loop {
            let c = if chunked {
                match Self::chunk(&mut r)? {
                    Some(c) => c,
                    None => return Ok(()),
                }
            } else {
                let mut b = vec![0; 4096];
                let n = r.read(&mut b)?;
                if n == 0 {
                    return Ok(());
                }
                b.truncate(n);
                b
            };
            pending.extend_from_slice(&c);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !data.is_empty() && !f(&event, &data) {
                        return Ok(());
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
        }
    }
}
