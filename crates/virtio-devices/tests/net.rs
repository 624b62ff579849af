//! virtio-net against a real TAP inside a network namespace this test
//! creates (needs root, CAP_NET_ADMIN): ARP and ICMP round trips through the
//! host kernel, with mergeable rx buffers.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use virtio_devices::net::{feat, Net, Tap};
use virtio_devices::testing::FakeDriver;

const T: Duration = Duration::from_secs(10);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];

struct Netns(String);

impl Netns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ferro-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        Self(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
    /// Opens a TAP from a thread that has entered the namespace.
    fn tap(&self, name: &str) -> Tap {
        let path = format!("/run/netns/{}", self.0);
        let name = name.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns handle");
            // SAFETY: setns on a valid netns fd; affects only this thread.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            Tap::open(&name).expect("open tap in netns")
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?} failed");
}

struct Guest {
    d: FakeDriver,
    rx_bufs: HashMap<u32, u64>,
    buf_size: u32,
}

impl Guest {
    fn new(tap: Tap, buf_size: u32, want: u64) -> Self {
        let net = Net::new(tap, GUEST_MAC);
        let mut d = FakeDriver::new(Box::new(net), 32 << 20);
        d.init(want, 256);
        let mut g = Self {
            d,
            rx_bufs: HashMap::new(),
            buf_size,
        };
        for _ in 0..64 {
            g.post_rx();
        }
        g.d.notify(0);
        g
    }

    fn post_rx(&mut self) {
        let a = self.d.alloc(self.buf_size as u64);
        let head = self.d.add_chain(0, &[(a, self.buf_size, true)]);
        self.rx_bufs.insert(head as u32, a);
    }

    fn send(&mut self, frame: &[u8]) {
        let mut b = vec![0u8; 12];
        b.extend_from_slice(frame);
        let a = self.d.alloc(b.len() as u64);
        self.d.write_bytes(a, &b);
        self.d.add_chain(1, &[(a, b.len() as u32, false)]);
        self.d.notify(1);
        self.d.wait_used(1, T).expect("tx completes");
    }

    /// Next received frame (vnet header stripped) and its buffer count.
    fn recv(&mut self, deadline: Instant) -> Option<(Vec<u8>, u16)> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, len) = self.d.wait_used(0, left)?;
        let a = self.rx_bufs.remove(&id).expect("known rx buffer");
        let mut data = self.d.read_bytes(a, len as usize);
        let nb = u16::from_le_bytes([data[10], data[11]]);
        for _ in 1..nb {
            let (id, len) = self.d.wait_used(0, T).expect("rest of a merged frame");
            let a = self.rx_bufs.remove(&id).expect("known rx buffer");
            data.extend(self.d.read_bytes(a, len as usize));
        }
        for _ in 0..nb {
            self.post_rx();
        }
        self.d.notify(0);
        Some((data[12..].to_vec(), nb))
    }

    /// Receives until `want` matches, answering ARP requests for GUEST_IP.
    fn expect(&mut self, what: &str, want: impl Fn(&[u8]) -> bool) -> (Vec<u8>, u16) {
        let deadline = Instant::now() + T;
        loop {
            let (f, nb) = self
                .recv(deadline)
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            if want(&f) {
                return (f, nb);
            }
            if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 1] && f[38..42] == GUEST_IP
            {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[22..28]);
                let ip: [u8; 4] = f[28..32].try_into().unwrap();
                self.send(&arp(2, mac, ip));
            }
        }
    }
}

fn arp(op: u16, target_mac: [u8; 6], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(if op == 1 { [0xff; 6] } else { target_mac });
    f.extend(GUEST_MAC);
    f.extend([8, 6, 0, 1, 8, 0, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(GUEST_MAC);
    f.extend(GUEST_IP);
    f.extend(if op == 1 { [0; 6] } else { target_mac });
    f.extend(target_ip);
    f
}

fn csum(data: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ping(dst_mac: [u8; 6], payload: &[u8], seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend(seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend(GUEST_IP);
    ip.extend(HOST_IP);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend(dst_mac);
    f.extend(GUEST_MAC);
    f.extend([8, 0]);
    f.extend(ip);
    f.extend(icmp);
    f
}

fn setup(buf_size: u32, want: u64) -> (Netns, Guest) {
    let ns = Netns::new();
    let tap = ns.tap("ftap0");
    assert_eq!(tap.name(), "ftap0");
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "ftap0"]);
    ns.ip(&["link", "set", "ftap0", "up"]);
    let g = Guest::new(tap, buf_size, want);
    (ns, g)
}

fn arp_resolve(g: &mut Guest) -> [u8; 6] {
    g.send(&arp(1, [0; 6], HOST_IP));
    let (reply, _) = g.expect("ARP reply", |f| {
        f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == HOST_IP
    });
    assert_eq!(reply[0..6], GUEST_MAC, "reply addressed to our MAC");
    reply[22..28].try_into().unwrap()
}

#[test]
fn config_reports_mac_and_link_up() {
    let (_ns, mut g) = setup(2048, u64::MAX);
    assert_eq!(g.d.read_config(0, 6), GUEST_MAC);
    assert_eq!(g.d.read_config(6, 2), [1, 0], "link up");
    let f = g.d.dev.acked_features();
    for b in [feat::MAC, feat::STATUS, feat::MRG_RXBUF] {
        assert_ne!(f & b, 0);
    }
}

#[test]
fn arp_and_ping_round_trip_through_the_host_kernel() {
    let (_ns, mut g) = setup(2048, u64::MAX);
    let host_mac = arp_resolve(&mut g);
    let payload: Vec<u8> = (0..56u8).collect();
    g.send(&ping(host_mac, &payload, 1));
    let (reply, _) = g.expect("echo reply", |f| {
        f.len() > 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0
    });
    assert_eq!(reply[26..30], HOST_IP);
    assert_eq!(reply[42..], payload[..]);
}

#[test]
fn big_frames_use_mergeable_rx_buffers() {
    // 256-byte rx buffers: a 1400-byte echo reply needs several.
    let (_ns, mut g) = setup(256, u64::MAX);
    let host_mac = arp_resolve(&mut g);
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 13) as u8).collect();
    for seq in 1..=5 {
        g.send(&ping(host_mac, &payload, seq));
        let (reply, nb) = g.expect("big echo reply", |f| {
            f.len() > 42 && f[12..14] == [8, 0] && f[34] == 0
        });
        assert!(
            nb >= 6,
            "1454 bytes in 256-byte buffers needs >= 6, got {nb}"
        );
        assert_eq!(reply[42..], payload[..]);
        assert_eq!(u16::from_be_bytes([reply[40], reply[41]]), seq);
    }
}

#[test]
fn without_mergeable_buffers_small_rx_buffers_drop_big_frames_only() {
    let want = !feat::MRG_RXBUF;
    let (_ns, mut g) = setup(256, want);
    assert_eq!(g.d.dev.acked_features() & feat::MRG_RXBUF, 0);
    let host_mac = arp_resolve(&mut g);
    g.send(&ping(host_mac, &[7; 1400], 9));
    // Dropped; a small ping still gets through afterwards.
    g.send(&ping(host_mac, &[1; 16], 10));
    let (reply, nb) = g.expect("small echo reply", |f| {
        f.len() > 42 && f[12..14] == [8, 0] && f[34] == 0
    });
    assert_eq!(nb, 1);
    assert_eq!(
        u16::from_be_bytes([reply[40], reply[41]]),
        10,
        "big reply was dropped"
    );
    assert!(!g.d.needs_reset());
}
