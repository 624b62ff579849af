//! virtio-console (a line each way over pipes) and virtio-rng (random bytes).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_devices::console::{Console, ConsoleIo};
use virtio_devices::rng::Rng;
use virtio_devices::testing::FakeDriver;

const T: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn console_carries_a_line_each_way() {
    let (rd, mut wr) = pipe();
    let sink = Sink::default();
    let con = Console::new(ConsoleIo {
        input: Some(rd),
        output: Box::new(sink.clone()),
    });
    let mut d = FakeDriver::new(Box::new(con), 8 << 20);
    d.init(u64::MAX, 64);
    assert_eq!(d.read_config(4, 4), 1u32.to_le_bytes(), "max_nr_ports");

    // Guest -> host.
    let line = b"hello from hvc0\n";
    let b = d.alloc(line.len() as u64);
    d.write_bytes(b, line);
    d.add_chain(1, &[(b, line.len() as u32, false)]);
    d.notify(1);
    assert!(d.wait_used(1, T).is_some());
    assert_eq!(sink.0.lock().unwrap().as_slice(), line);

    // Host -> guest: input arrives before the guest posts buffers; it waits.
    wr.write_all(b"hello from the host\n").unwrap();
    let b1 = d.alloc(8);
    let b2 = d.alloc(64);
    d.add_chain(0, &[(b1, 8, true)]);
    d.notify(0);
    let (_, n1) = d.wait_used(0, T).expect("first rx buffer");
    d.add_chain(0, &[(b2, 64, true)]);
    d.notify(0);
    let (_, n2) = d.wait_used(0, T).expect("second rx buffer");
    let mut got = d.read_bytes(b1, n1 as usize);
    got.extend(d.read_bytes(b2, n2 as usize));
    assert_eq!(got, b"hello from the host\n");

    // Closing the host side is not an error for the device.
    drop(wr);
    let b3 = d.alloc(line.len() as u64);
    d.write_bytes(b3, line);
    d.add_chain(1, &[(b3, line.len() as u32, false)]);
    d.notify(1);
    assert!(d.wait_used(1, T).is_some());
    assert!(!d.needs_reset());
}

#[test]
fn rng_yields_random_data() {
    let mut d = FakeDriver::new(Box::new(Rng::new()), 8 << 20);
    d.init(u64::MAX, 64);
    let a = d.alloc(4096);
    let b = d.alloc(100_000);
    d.add_chain(0, &[(a, 4096, true)]);
    d.add_chain(0, &[(b, 100_000, true)]);
    d.notify(0);
    let deadline = Instant::now() + T;
    let (_, la) = d.wait_used(0, T).unwrap();
    let (_, lb) = d.wait_used(0, deadline - Instant::now()).unwrap();
    assert_eq!(la, 4096);
    assert_eq!(lb, 65536, "one request is capped at 64 KiB");
    let x = d.read_bytes(a, 4096);
    let y = d.read_bytes(b, 4096);
    assert_ne!(x, y);
    // Crude but able to fail: every byte value shows up in 64 KiB of noise,
    // and no byte value dominates.
    let mut hist = [0u32; 256];
    for v in d.read_bytes(b, 65536) {
        hist[v as usize] += 1;
    }
    assert!(hist.iter().all(|&c| c > 100 && c < 500), "{hist:?}");
    // Readable descriptors are not written.
    let c = d.alloc(16);
    d.write_bytes(c, &[0xaa; 16]);
    d.add_chain(0, &[(c, 16, false)]);
    d.notify(0);
    assert_eq!(d.wait_used(0, T).unwrap().1, 0);
    assert_eq!(d.read_bytes(c, 16), [0xaa; 16]);
}
