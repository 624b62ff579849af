//! `ferro vm …`: a thin client of the daemon's API (virsh's verbs and
//! output conventions). Relative paths in a definition file are resolved
//! against the file's folder before it is sent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::client::{Client, Endpoint};
use crate::spec;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// The daemon's Unix socket (default: the one for --state-dir).
    #[arg(long, env = "FERROD_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// State dir of the daemon to talk to (picks its socket).
    #[arg(long, env = "FERROD_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Talk to a daemon over TCP at ADDR:PORT instead (with --token-file).
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub url: Option<String>,
    /// Bearer token file for --url.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: VmCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum VmCmd {
    /// Define (or update) a VM from a TOML or JSON file.
    Define { file: PathBuf },
    /// Remove a shut-off VM's definition.
    Undefine {
        name: String,
        /// Also delete its writable disk images.
        #[arg(long)]
        remove_disks: bool,
    },
    /// List running VMs (--all: every defined VM).
    List {
        #[arg(long)]
        all: bool,
    },
    /// State and definition of a VM.
    Info {
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a VM.
    Start {
        name: String,
        /// Start with the vCPUs paused.
        #[arg(long)]
        paused: bool,
    },
    /// Ask the guest to power off; destroy it after the timeout.
    Shutdown {
        name: String,
        /// Seconds to wait (default: the daemon's --shutdown-timeout).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Stop a VM now (disks are flushed).
    Destroy { name: String },
    /// Pause a VM's vCPUs.
    Suspend { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Attach to the serial console (Ctrl-] detaches).
    Console { name: String },
    /// Print the serial console log.
    Logs {
        name: String,
        /// Last BYTES of the log.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Edit a definition in $EDITOR and redefine it.
    Edit { name: String },
    /// Print the definition as TOML.
    Dump { name: String },
    /// Start the VM when the daemon starts (once per host boot).
    Autostart {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Follow lifecycle events.
    Events {
        /// Only this VM's events.
        #[arg(long)]
        vm: Option<String>,
        /// Exit after COUNT events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Snapshots of a running VM (CPU, devices, memory and disks).
    #[command(subcommand)]
    Snapshot(SnapCmd),
    /// Pause a VM, write its state to FILE and stop it.
    Save { name: String, file: PathBuf },
    /// Start a VM from a state file written by `save`.
    Restore { name: String, file: PathBuf },
    /// Clone a shut-off VM (new UUID and MACs).
    Clone {
        src: String,
        new: String,
        /// qcow2 overlays on the source's disks instead of copies.
        #[arg(long)]
        linked: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapCmd {
    Create { name: String, snapshot: String },
    List { name: String },
    Revert { name: String, snapshot: String },
    Delete { name: String, snapshot: String },
}

fn client(a: &VmArgs) -> Result<Client> {
    if let Some(url) = &a.url {
        let token = match &a.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        return Ok(Client {
            endpoint: Endpoint::Tcp {
                addr: addr.to_string(),
                token,
            },
        });
    }
    let sock = match &a.socket {
        Some(s) => s.clone(),
        None => crate::default_socket(a.state_dir.as_deref())?,
    };
    Ok(Client::unix(sock))
}

/// Percent-encodes a path segment (names are restricted, but be safe).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Makes a definition's relative paths absolute (relative to `base`).
pub fn absolutize(s: &mut spec::VmSpec, base: &Path) {
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for p in [&mut s.kernel, &mut s.firmware, &mut s.initrd]
        .into_iter()
        .flatten()
    {
        abs(p);
    }
    for d in &mut s.disks {
        abs(&mut d.path);
    }
}

fn load_definition(file: &Path) -> Result<spec::VmSpec> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut s = spec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let base = std::path::absolute(file)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    absolutize(&mut s, &base);
    Ok(s)
}

pub fn vm_main(a: VmArgs) -> Result<i32> {
    let c = client(&a)?;
    let vm = |n: &str| format!("/v1/vms/{}", seg(n));
    match &a.cmd {
        VmCmd::Define { file } => {
            let s = load_definition(file)?;
            let v = c.call("POST", "/v1/vms", Some(&serde_json::to_value(&s)?))?;
            println!(
                "Domain '{}' defined from {} (UUID {})",
                s.name,
                file.display(),
                v["uuid"].as_str().unwrap_or("?")
            );
        }
        VmCmd::Undefine { name, remove_disks } => {
            c.call(
                "DELETE",
                &format!("{}?remove_disks={remove_disks}", vm(name)),
                None,
            )?;
            println!("Domain '{name}' has been undefined");
        }
        VmCmd::List { all } => {
            let v = c.call("GET", &format!("/v1/vms?all={all}"), None)?;
            println!(" {:<8} {:<24} {:<9} Reason", "PID", "Name", "State");
            println!("{}", "-".repeat(56));
            for i in v.as_array().into_iter().flatten() {
                let pid = i["pid"]
                    .as_i64()
                    .map(|p| p.to_string())
                    .unwrap_or("-".into());
                println!(
                    " {:<8} {:<24} {:<9} {}",
                    pid,
                    i["name"].as_str().unwrap_or(""),
                    i["state"].as_str().unwrap_or(""),
                    i["reason"].as_str().unwrap_or("")
                );
            }
        }
        VmCmd::Info { name, json } => {
            let v = c.call("GET", &vm(name), None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let d = &v["definition"];
                for (k, val) in [
                    ("Name", v["name"].clone()),
                    ("UUID", v["uuid"].clone()),
                    ("State", v["state"].clone()),
                    ("Reason", v["reason"].clone()),
                    ("PID", v["pid"].clone()),
                    ("Arch", d["arch"].clone()),
                    ("CPU(s)", d["cpus"].clone()),
                    ("Memory", d["memory"].clone()),
                    ("Autostart", v["autostart"].clone()),
                    ("Restart", v["restart"].clone()),
                    ("Restarts", v["restarts"].clone()),
                    ("Console", v["console_socket"].clone()),
                ] {
                    let s = match val {
                        Value::String(s) => s,
                        Value::Null => "-".into(),
                        o => o.to_string(),
                    };
                    println!("{:<12}{s}", format!("{k}:"));
                }
            }
        }
        VmCmd::Start { name, paused } => {
            c.call_wait(
                "POST",
                &format!("{}/start", vm(name)),
                Some(&json!({"paused": paused})),
            )?;
            println!("Domain '{name}' started");
        }
        VmCmd::Shutdown { name, timeout } => {
            let body = match timeout {
                Some(t) => json!({"timeout": t}),
                None => json!({}),
            };
            let r = c.call_wait("POST", &format!("{}/shutdown", vm(name)), Some(&body))?;
            if r["destroyed"].as_bool() == Some(true) {
                println!("Domain '{name}' did not shut down in time and was destroyed");
            } else {
                println!("Domain '{name}' is shut down");
            }
        }
        VmCmd::Destroy { name } => {
            c.call("POST", &format!("{}/destroy", vm(name)), None)?;
            println!("Domain '{name}' destroyed");
        }
        VmCmd::Suspend { name } => {
            c.call("POST", &format!("{}/suspend", vm(name)), None)?;
            println!("Domain '{name}' suspended");
        }
        VmCmd::Resume { name } => {
            c.call("POST", &format!("{}/resume", vm(name)), None)?;
            println!("Domain '{name}' resumed");
        }
        VmCmd::Console { name } => {
            let v = c.call("GET", &vm(name), None)?;
            if !matches!(v["state"].as_str(), Some("running" | "paused" | "shutdown")) {
                bail!("domain '{name}' is not running");
            }
            let sock = v["console_socket"].as_str().context("no console socket")?;
            console(Path::new(sock), name)?;
        }
        VmCmd::Logs { name, tail } => {
            let q = tail.map(|t| format!("?tail={t}")).unwrap_or_default();
            let r = c.request("GET", &format!("{}/logs{q}", vm(name)), None, b"")?;
            if r.status != 200 {
                Client::check(r)?;
            } else {
                std::io::stdout().write_all(&r.body)?;
            }
        }
        VmCmd::Dump { name } => {
            let r = c.request("GET", &format!("{}/definition", vm(name)), None, b"")?;
            if r.status != 200 {
                Client::check(r)?;
            } else {
                std::io::stdout().write_all(&r.body)?;
            }
        }
        VmCmd::Edit { name } => {
            let r = c.request("GET", &format!("{}/definition", vm(name)), None, b"")?;
            if r.status != 200 {
                Client::check(r)?;
                return Ok(1);
            }
            let dir = tempdir()?;
            let f = dir.join(format!("{name}.toml"));
            std::fs::write(&f, &r.body)?;
            let editor = std::env::var("VISUAL")
                .or_else(|_| std::env::var("EDITOR"))
                .unwrap_or_else(|_| "vi".into());
            loop {
                let st = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("{editor} \"$1\""))
                    .arg("sh")
                    .arg(&f)
                    .status()
                    .with_context(|| format!("cannot run the editor {editor:?}"))?;
                if !st.success() {
                    bail!("the editor failed; definition not changed");
                }
                let new = std::fs::read(&f)?;
                if new == r.body {
                    println!("Domain '{name}' definition not changed");
                    break;
                }
                let res = load_definition(&f).and_then(|s| {
                    if s.name != *name {
                        bail!("name: renaming is not supported (was '{name}')");
                    }
                    c.call("POST", "/v1/vms", Some(&serde_json::to_value(&s)?))
                });
                match res {
                    Ok(_) => {
                        println!("Domain '{name}' definition updated");
                        break;
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        if !ask("Edit again? [y/N] ")? {
                            bail!("definition not changed");
                        }
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        VmCmd::Autostart { name, state } => {
            c.call(
                "PUT",
                &format!("{}/autostart", vm(name)),
                Some(&json!({"enabled": state == "on"})),
            )?;
            println!(
                "Domain '{name}' {} autostart",
                if state == "on" {
                    "marked as"
                } else {
                    "unmarked as"
                }
            );
        }
        VmCmd::Events { vm: v, count } => {
            let q = v
                .as_ref()
                .map(|v| format!("?vm={}", seg(v)))
                .unwrap_or_default();
            let mut n = 0u64;
            let mut out = std::io::stdout();
            c.events(&q, |_ev, data| {
                let e: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                let _ = writeln!(
                    out,
                    "event '{}' for domain '{}': {}",
                    e["event"].as_str().unwrap_or("?"),
                    e["vm"].as_str().unwrap_or("?"),
                    e["detail"].as_str().unwrap_or("")
                );
                let _ = out.flush();
                n += 1;
                count.is_none_or(|c| n < c)
            })?;
        }
        VmCmd::Snapshot(s) => match s {
            SnapCmd::Create { name, snapshot } => {
                c.call_wait(
                    "POST",
                    &format!("{}/snapshots", vm(name)),
                    Some(&json!({"name": snapshot})),
                )?;
                println!("Domain snapshot {snapshot} created");
            }
            SnapCmd::List { name } => {
                let v = c.call("GET", &format!("{}/snapshots", vm(name)), None)?;
                println!(" {:<24} {:<20} VM state size", "Name", "Creation Time");
                println!("{}", "-".repeat(60));
                for s in v.as_array().into_iter().flatten() {
                    println!(
                        " {:<24} {:<20} {}",
                        s["name"].as_str().unwrap_or(""),
                        s["date_sec"].as_u64().unwrap_or(0),
                        s["vm_state_size"].as_u64().unwrap_or(0)
                    );
                }
            }
            SnapCmd::Revert { name, snapshot } => {
                c.call_wait(
                    "POST",
                    &format!("{}/snapshots/{}/revert", vm(name), seg(snapshot)),
                    None,
                )?;
                println!("Domain '{name}' reverted to snapshot {snapshot}");
            }
            SnapCmd::Delete { name, snapshot } => {
                c.call(
                    "DELETE",
                    &format!("{}/snapshots/{}", vm(name), seg(snapshot)),
                    None,
                )?;
                println!("Domain snapshot {snapshot} deleted");
            }
        },
        VmCmd::Save { name, file } => {
            let p = std::path::absolute(file)?;
            c.call_wait(
                "POST",
                &format!("{}/save", vm(name)),
                Some(&json!({"path": p})),
            )?;
            println!("Domain '{name}' saved to {}", p.display());
        }
        VmCmd::Restore { name, file } => {
            let p = std::path::absolute(file)?;
            c.call_wait(
                "POST",
                &format!("{}/restore", vm(name)),
                Some(&json!({"path": p})),
            )?;
            println!("Domain '{name}' restored from {}", p.display());
        }
        VmCmd::Clone { src, new, linked } => {
            let v = c.call_wait(
                "POST",
                &format!("{}/clone", vm(src)),
                Some(&json!({"name": new, "linked": linked})),
            )?;
            println!(
                "Domain '{new}' cloned from '{src}' (UUID {}{})",
                v["uuid"].as_str().unwrap_or("?"),
                if *linked { ", linked" } else { "" }
            );
        }
    }
    Ok(0)
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("ferro-vm-edit-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn ask(q: &str) -> Result<bool> {
    eprint!("{q}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim().eq_ignore_ascii_case("y"))
}

/// Restores the terminal mode on drop.
struct Raw(Option<libc::termios>);

impl Raw {
    fn enter() -> Raw {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return Raw(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Raw(None);
            }
            let old = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Raw(Some(old))
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Attaches the terminal to a console socket until Ctrl-] (or stdin's end,
/// or the VM's end).
fn console(sock: &Path, name: &str) -> Result<()> {
    let s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to the console of '{name}'"))?;
    eprintln!("Connected to domain '{name}'\r\nEscape character is ^]\r");
    let _raw = Raw::enter();
    let mut r = s.try_clone()?;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = out.write_all(b"\r\n[console closed]\r\n");
                    let _ = out.flush();
                    std::process::exit(0);
                }
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        }
    });
    let mut w = s;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == 0x1d) {
            w.write_all(&buf[..i])?;
            break;
        }
        w.write_all(&buf[..n])?;
    }
    eprintln!("\r");
    Ok(())
}
