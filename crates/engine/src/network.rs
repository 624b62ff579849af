//! Container networking: `none` (own namespace, loopback only), `host`, and
//! `bridge` (default): bridge `ferro0` at 10.89.0.1/24, one veth pair per
//! container into a named netns (`ip netns`), NAT to the outside via an
//! iptables MASQUERADE rule, and `-p HOST:CTR` via DNAT rules plus a
//! userland proxy on 127.0.0.1 (loopback traffic never traverses PREROUTING).

use crate::container::{Container, Port};
use crate::paths::Engine;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::Command;

pub const BRIDGE: &str = "ferro0";
pub const SUBNET_PREFIX: &str = "10.89.0";
pub const GATEWAY: &str = "10.89.0.1";

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Appends an iptables rule unless it is already there.
fn ensure_rule(table: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["iptables", "-w", "-t", table, "-C"];
    check.extend_from_slice(rule);
    if ok(&check) {
        return Ok(());
    }
    let mut add = vec!["iptables", "-w", "-t", table, "-A"];
    add.extend_from_slice(rule);
    run(&add)
}

fn delete_rule(table: &str, rule: &[&str]) {
    let mut del = vec!["iptables", "-w", "-t", table, "-D"];
    del.extend_from_slice(rule);
    while ok(&del) {}
}

pub fn ensure_bridge() -> Result<()> {
    if !ok(&["ip", "link", "show", BRIDGE]) {
        // Another container may create it at the same moment.
        let _ = run(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        let _ = run(&["ip", "addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE]);
    }
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
    let subnet = format!("{SUBNET_PREFIX}.0/24");
    ensure_rule(
        "nat",
        &[
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            BRIDGE,
            "-j",
            "MASQUERADE",
        ],
    )?;
    ensure_rule("filter", &["FORWARD", "-i", BRIDGE, "-j", "ACCEPT"])?;
    ensure_rule("filter", &["FORWARD", "-o", BRIDGE, "-j", "ACCEPT"])?;
    Ok(())
}

pub fn netns_name(c: &Container) -> String {
    format!("ferro-{}", c.short_id())
}

pub fn netns_path(c: &Container) -> String {
    format!("/run/netns/{}", netns_name(c))
}

/// Locks the network allocation (held while choosing an address).
struct NetLock(std::fs::File);
impl Drop for NetLock {
    fn drop(&mut self) {
        // SAFETY: valid fd owned by self.0.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock(eng: &Engine) -> Result<NetLock> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(eng.root.join("network.lock"))?;
    // SAFETY: valid fd owned by f.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(NetLock(f))
}

/// Creates the container's netns and veth, picks an address; returns it.
pub fn setup_bridge(eng: &Engine, c: &mut Container) -> Result<String> {
    let _l = lock(eng)?;
    ensure_bridge()?;
    let used: HashSet<String> = crate::container::list(eng)?
        .into_iter()
        .filter(|o| o.id != c.id)
        .map(|o| o.ip)
        .collect();
    let ip = (2..255)
        .map(|n| format!("{SUBNET_PREFIX}.{n}"))
        .find(|a| !used.contains(a))
        .context("no free address left on the ferro0 bridge")?;
    for p in &c.config.ports {
        if crate::container::list(eng)?.iter().any(|o| {
            o.id != c.id
                && o.config
                    .ports
                    .iter()
                    .any(|q| q.host == p.host && q.proto == p.proto)
        }) {
            bail!("port {} is already allocated", p.host);
        }
    }
    let ns = netns_name(c);
    let host_if = format!("vf{}", &c.id[..10]);
    let peer = format!("vc{}", &c.id[..10]);
    run(&["ip", "netns", "add", &ns])?;
    let res = (|| -> Result<()> {
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &ns])?;
        run(&["ip", "link", "set", &host_if, "master", BRIDGE, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &ns, "route", "add", "default", "via", GATEWAY])?;
        for p in &c.config.ports {
            for rule in dnat_rules(p, &ip, &c.id) {
                let r: Vec<&str> = rule.iter().map(String::as_str).collect();
                ensure_rule("nat", &r)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = run(&["ip", "link", "del", &host_if]);
        let _ = run(&["ip", "netns", "del", &ns]);
        return Err(e);
    }
    c.ip = ip.clone();
    c.save(eng)?;
    Ok(ip)
}

fn dnat_rules(p: &Port, ip: &str, id: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let hp = p.host.to_string();
    let to = format!("{ip}:{}", p.container);
    let comment = format!("ferro:{}", &id[..12]);
    vec![
        s(&[
            "PREROUTING",
            "-p",
            &p.proto,
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "--dport",
            &hp,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]),
        s(&[
            "OUTPUT",
            "-p",
            &p.proto,
            "!",
            "-d",
            "127.0.0.0/8",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "--dport",
            &hp,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]),
    ]
}

/// Removes what `setup_bridge` made (idempotent).
pub fn teardown(c: &Container) {
    if c.ip.is_empty() {
        return;
    }
    for p in &c.config.ports {
        for rule in dnat_rules(p, &c.ip, &c.id) {
            let r: Vec<&str> = rule.iter().map(String::as_str).collect();
            delete_rule("nat", &r);
        }
    }
    let _ = run(&["ip", "link", "del", &format!("vf{}", &c.id[..10])]);
    let _ = run(&["ip", "netns", "del", &netns_name(c)]);
}

/// Serves `127.0.0.1:HOST` by copying to the container's address (TCP),
/// like docker-proxy. Runs in the monitor's threads until it exits.
pub fn start_proxies(c: &Container) -> Result<()> {
    for p in &c.config.ports {
        if p.proto != "tcp" || c.ip.is_empty() {
            continue;
        }
        let l = TcpListener::bind(("127.0.0.1", p.host))
            .with_context(|| format!("binding 127.0.0.1:{}", p.host))?;
        let dest = format!("{}:{}", c.ip, p.container);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let dest = dest.clone();
                std::thread::spawn(move || {
                    if let Ok(up) = TcpStream::connect(&dest) {
                        splice(s, up);
                    }
                });
            }
        });
    }
    Ok(())
}

fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let (mut r, mut w) = (a2, b2);
        let _ = io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let (mut r, mut w) = (b, a);
    let _ = io::copy(&mut r, &mut w);
    let _ = w.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// Parses `-p [IP:]HOST:CTR[/proto]`.
pub fn parse_port(s: &str) -> Result<Port> {
    let (spec, proto) = match s.split_once('/') {
        Some((a, p)) if p == "tcp" || p == "udp" => (a, p),
        Some((_, p)) => bail!("invalid protocol {p:?} in port spec {s:?}"),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (h, c) = match parts.as_slice() {
        [h, c] => (*h, *c),
        [_ip, h, c] => (*h, *c),
        _ => bail!("invalid port spec {s:?}: expected HOST:CONTAINER"),
    };
    let num = |x: &str| -> Result<u16> {
        match x.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("invalid port {x:?} in {s:?}"),
        }
    };
    Ok(Port {
        host: num(h)?,
        container: num(c)?,
        proto: proto.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ports() {
        assert_eq!(
            parse_port("8080:80").unwrap(),
            Port {
                host: 8080,
                container: 80,
                proto: "tcp".into()
            }
        );
        assert_eq!(parse_port("0.0.0.0:53:53/udp").unwrap().proto, "udp");
        assert!(parse_port("80").is_err());
        assert!(parse_port("99999:1").is_err());
        assert!(parse_port("1:2/sctp").is_err());
    }
}
