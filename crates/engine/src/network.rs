//! Container networking: `none` (own namespace, loopback only), `host`, and
//! `bridge` (default): bridge `ferro0` at 10.89.0.1/24, one veth pair per
//! container into a named netns (`ip netns`), NAT to the outside via an
//! iptables MASQUERADE rule, and `-p HOST:CTR` via DNAT rules plus a
//! userland proxy on 127.0.0.1 (loopback traffic never traverses PREROUTING).

use crate::container::{Container, Port};
use crate::paths::Engine;
use anyhow::{bail, Context, Result};
use std::io;
use std::net::{TcpListener, TcpStream};
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

/// Address and host-port leases are host-wide (not per engine root): one
/// file per lease under /run/ferrovisor, created atomically, holding the
/// owner's netns name; a lease whose netns is gone is stale and reused.
const LEASES: &str = "/run/ferrovisor/net";

fn take_lease(kind: &str, key: &str, owner: &str) -> Result<bool> {
    let dir = std::path::Path::new(LEASES).join(kind);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(key);
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(owner.as_bytes())?;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&p).unwrap_or_default();
                if holder == owner {
                    return Ok(true);
                }
                if holder.is_empty() || std::path::Path::new("/run/netns").join(&holder).exists() {
                    return Ok(false);
                }
                // Stale: the owner's netns is gone.
                let _ = std::fs::remove_file(&p);
            }
            Err(e) => return Err(e).with_context(|| format!("creating lease {}", p.display())),
        }
    }
    Ok(false)
}

fn drop_lease(kind: &str, key: &str, owner: &str) {
    let p = std::path::Path::new(LEASES).join(kind).join(key);
    if std::fs::read_to_string(&p)
        .map(|h| h == owner)
        .unwrap_or(false)
    {
        let _ = std::fs::remove_file(p);
    }
}

/// Creates the container's netns and veth, picks an address; returns it.
pub fn setup_bridge(eng: &Engine, c: &mut Container) -> Result<String> {
    ensure_bridge()?;
    let owner = netns_name(c);
    // The netns exists before any lease names it, so a lease is never seen stale.
    run(&["ip", "netns", "add", &owner])?;
    let mut ip = None;
    for n in 2..255 {
        let a = format!("{SUBNET_PREFIX}.{n}");
        if take_lease("ip", &a, &owner)? {
            ip = Some(a);
            break;
        }
    }
    let ip = ip.context("no free address left on the ferro0 bridge")?;
    // Record the lease before anything else can fail, so teardown frees it.
    c.ip = ip.clone();
    // (Build RUN steps have no container directory: the builder keeps `c`.)
    if c.dir(eng).exists() {
        c.save(eng)?;
    }
    for p in &c.config.ports {
        if !take_lease("port", &format!("{}-{}", p.proto, p.host), &owner)? {
            bail!("port {} is already allocated", p.host);
        }
    }
    let ns = netns_name(c);
    let host_if = format!("vf{}", &c.id[..10]);
    let peer = format!("vc{}", &c.id[..10]);
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
    res?;
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
    if c.config.network != "bridge" {
        return;
    }
    let owner = netns_name(c);
    for p in &c.config.ports {
        for rule in dnat_rules(p, &c.ip, &c.id) {
            let r: Vec<&str> = rule.iter().map(String::as_str).collect();
            delete_rule("nat", &r);
        }
    }
    let _ = run(&["ip", "link", "del", &format!("vf{}", &c.id[..10])]);
    let _ = run(&["ip", "netns", "del", &owner]);
    for p in &c.config.ports {
        drop_lease("port", &format!("{}-{}", p.proto, p.host), &owner);
    }
    drop_lease("ip", &c.ip, &owner);
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
