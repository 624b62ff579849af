//! End to end with Debian's kernel on the emulator: virtio-console (hvc0)
//! carries a line each way over a Unix socket, and /dev/hwrng (virtio-rng)
//! yields random data.

mod run_common;
mod virtio_util;
use run_common::*;
use virtio_util::*;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

#[test]
fn console_line_each_way_and_hwrng() {
    let dir = tempdir();
    let sock = dir.path().join("hvc.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut r = boot(&[
        "--rng".into(),
        "--virtio-console".into(),
        format!("socket={}", sock.display()),
    ]);
    // ferro connected before booting; the connection is waiting.
    listener.set_nonblocking(true).unwrap();
    let (conn, _) = listener.accept().expect("ferro connected to the socket");
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();

    // /dev/hwrng is virtio-rng, and its bytes do not compress.
    let cur = sh(&mut r, "cat /sys/class/misc/hw_random/rng_current", T);
    assert!(cur.contains("virtio_rng"), "{cur}");
    let n = sh(&mut r, "head -c 65536 /dev/hwrng | gzip -c | wc -c", T);
    let n: u64 = n.trim().parse().unwrap_or_else(|_| panic!("{n:?}"));
    assert!(n > 65000, "64 KiB from /dev/hwrng gzip to {n} bytes");

    // Guest -> host, then host -> guest, on one open hvc0.
    r.send(
        "exec 3<>/dev/hvc0; stty -F /dev/hvc0 -echo; echo line-from-guest >&3; \
         read -r l <&3; echo \"got:[$l]\"\n",
    );
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line from hvc0");
    assert_eq!(line.trim_end(), "line-from-guest");
    (&conn).write_all(b"line-from-host\n").unwrap();
    assert!(
        r.wait_for("got:[line-from-host]", Instant::now() + T),
        "{}",
        r.output
    );
    poweroff(r);
}
