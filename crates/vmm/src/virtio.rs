//! `ferro run`'s virtio flags (`--disk`, `--net`, `--rng`, `--virtio-console`)
//! and their attachment to the machine's virtio-mmio slots, in flag order:
//! disks first (vda, vdb, …), then NICs, rng, console.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arch::riscv64::{MachineBuilder, VirtioSlot};
use devices::BusDevice;
use virtio_devices::block::{Block, BlockConfig};
use virtio_devices::console::{Console, ConsoleIo};
use virtio_devices::net::{parse_mac, Net, Tap};
use virtio_devices::rng::Rng;
use virtio_devices::{MmioTransport, VirtioDevice};

/// The virtio part of `ferro run`'s flags.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VirtioArgs {
    /// Attach a virtio-blk disk: PATH[,format=raw|qcow2][,readonly=on][,serial=ID]
    /// (repeatable; the first is /dev/vda). A ',' in PATH is written ',,'.
    #[arg(long, value_name = "PATH[,OPTS]", value_parser = DiskSpec::parse)]
    pub disk: Vec<DiskSpec>,
    /// Attach a virtio-net NIC on a TAP: tap=NAME[,mac=MAC] (an existing or new
    /// TAP), or bridge=BR[,mac=MAC] (a new TAP added to bridge BR, removed at
    /// exit). Repeatable.
    #[arg(long, value_name = "tap=NAME|bridge=BR[,mac=MAC]", value_parser = NetSpec::parse)]
    pub net: Vec<NetSpec>,
    /// Attach a virtio-rng device fed by the host's getrandom (/dev/hwrng).
    #[arg(long)]
    pub rng: bool,
    /// Attach a virtio-console (hvc0): socket=PATH connects to a listening
    /// Unix socket (both directions), file=PATH appends guest output to a file.
    #[arg(long, value_name = "socket=PATH|file=PATH", value_parser = ConsoleSpec::parse)]
    pub virtio_console: Option<ConsoleSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub format: Option<DiskFormat>,
    pub read_only: bool,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetBackend {
    Tap(String),
    Bridge(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetSpec {
    pub backend: NetBackend,
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConsoleSpec {
    Socket(PathBuf),
    File(PathBuf),
}

/// Splits `a,b=c,,d` into `["a", "b=c,d"]` (QEMU's ',,' escape).
fn split_opts(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == ',' {
            if it.peek() == Some(&',') {
                it.next();
                out.last_mut().expect("non-empty").push(',');
            } else {
                out.push(String::new());
            }
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("{key}={v}: expected on or off")),
    }
}

impl DiskSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts = split_opts(s);
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            format: None,
            read_only: false,
            serial: None,
        };
        for (i, p) in parts.iter().enumerate() {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) if i > 0 || k == "file" => (k, v),
                _ if i == 0 => ("file", p.as_str()),
                _ => return Err(format!("disk option {p:?} is not KEY=VALUE")),
            };
            match k {
                "file" => spec.path = PathBuf::from(v),
                "format" => {
                    spec.format = Some(match v {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        _ => return Err(format!("format={v}: expected raw or qcow2")),
                    })
                }
                "readonly" | "ro" => spec.read_only = on_off(k, v)?,
                "serial" => {
                    if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!("serial={v}: at most 20 printable ASCII characters"));
                    }
                    spec.serial = Some(v.to_string());
                }
                _ => {
                    return Err(format!(
                        "unknown disk option {k:?} (known: format, readonly, serial)"
                    ))
                }
            }
        }
        if spec.path.as_os_str().is_empty() {
            return Err("disk needs a PATH".into());
        }
        Ok(spec)
    }
}

impl NetSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut backend = None;
        let mut mac = None;
        for p in split_opts(s) {
            let Some((k, v)) = p.split_once('=') else {
                return Err(format!("net option {p:?} is not KEY=VALUE"));
            };
            let set = |b: NetBackend, backend: &mut Option<NetBackend>| {
                if backend.replace(b).is_some() {
                    Err("give exactly one of tap= and bridge=".to_string())
                } else {
                    Ok(())
                }
            };
            match k {
                "tap" | "bridge" => {
                    if v.is_empty() || v.len() > 15 || v.contains('/') {
                        return Err(format!("{k}={v}: interface names are 1 to 15 bytes"));
                    }
                    let b = if k == "tap" {
                        NetBackend::Tap(v.into())
                    } else {
                        NetBackend::Bridge(v.into())
                    };
                    set(b, &mut backend)?;
                }
                "mac" => mac = Some(parse_mac(v).map_err(|e| e.to_string())?),
                _ => {
                    return Err(format!(
                        "unknown net option {k:?} (known: tap, bridge, mac)"
                    ))
                }
            }
        }
        let backend = backend.ok_or("net needs tap=NAME or bridge=BR")?;
        Ok(NetSpec { backend, mac })
    }
}

impl ConsoleSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some(("socket", p)) if !p.is_empty() => Ok(Self::Socket(p.into())),
            Some(("file", p)) if !p.is_empty() => Ok(Self::File(p.into())),
            _ => Err(format!("{s:?}: expected socket=PATH or file=PATH")),
        }
    }
}

/// QEMU's default MAC for NIC `i`: 52:54:00:12:34:56, then …:57, …
pub fn default_mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(i as u8)]
}

fn open_disk(d: &DiskSpec) -> Result<Block> {
    let meta = std::fs::metadata(&d.path)
        .with_context(|| format!("--disk {}: cannot open", d.path.display()))?;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        anyhow::bail!(
            "--disk {}: not a regular file or block device",
            d.path.display()
        );
    }
    let opts = block::OpenOptions {
        format: d.format.map(|f| match f {
            DiskFormat::Raw => block::Format::Raw,
            DiskFormat::Qcow2 => block::Format::Qcow2,
        }),
        read_only: d.read_only,
        ..Default::default()
    };
    let backend =
        block::open(&d.path, &opts).with_context(|| format!("--disk {}", d.path.display()))?;
    let cfg = BlockConfig {
        read_only: d.read_only,
        serial: d.serial.clone(),
        block_size: None,
    };
    Block::new(backend, cfg).with_context(|| format!("--disk {}", d.path.display()))
}

fn open_net(i: usize, n: &NetSpec) -> Result<Net> {
    let tap = match &n.backend {
        NetBackend::Tap(name) => {
            let t = Tap::open(name).with_context(|| format!("--net tap={name}"))?;
            t.set_up().with_context(|| format!("--net tap={name}"))?;
            t
        }
        NetBackend::Bridge(br) => {
            Tap::for_bridge(br).with_context(|| format!("--net bridge={br}"))?
        }
    };
    tracing::info!("virtio-net {i}: TAP {}", tap.name());
    Ok(Net::new(tap, n.mac.unwrap_or_else(|| default_mac(i))))
}

fn open_console(c: &ConsoleSpec) -> Result<Console> {
    let io = match c {
        ConsoleSpec::Socket(p) => {
            let s = UnixStream::connect(p)
                .with_context(|| format!("--virtio-console socket={}", p.display()))?;
            let out = s.try_clone()?;
            ConsoleIo {
                input: Some(OwnedFd::from(s)),
                output: Box::new(out),
            }
        }
        ConsoleSpec::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--virtio-console file={}", p.display()))?;
            ConsoleIo {
                input: None,
                output: Box::new(f),
            }
        }
    };
    Ok(Console::new(io))
}

/// A machine builder with virtio-mmio slots (riscv64 `virt`, x86-64).
pub trait VirtioHost {
    fn memory(&self) -> &vm_memory::GuestMemoryMmap;
    fn add_virtio(&mut self) -> Result<VirtioSlot>;
    fn attach_virtio(&mut self, slot: &VirtioSlot, dev: Arc<Mutex<dyn BusDevice>>) -> Result<()>;
}

impl VirtioHost for MachineBuilder {
    fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        MachineBuilder::memory(self)
    }
    fn add_virtio(&mut self) -> Result<VirtioSlot> {
        Ok(MachineBuilder::add_virtio(self)?)
    }
    fn attach_virtio(&mut self, slot: &VirtioSlot, dev: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
        Ok(MachineBuilder::attach_virtio(self, slot, dev)?)
    }
}

/// Attached transports, in slot order (snapshots reach their state).
pub type Transports = Vec<Arc<Mutex<MmioTransport>>>;

/// Puts `dev` behind a virtio-mmio transport in the next free slot;
/// returns the slot index and the transport.
pub fn attach_device(
    builder: &mut impl VirtioHost,
    dev: Box<dyn VirtioDevice>,
) -> Result<(usize, Arc<Mutex<MmioTransport>>)> {
    let slot = builder.add_virtio()?;
    let t = MmioTransport::new(dev, builder.memory().clone(), slot.irq.clone())
        .context("virtio-mmio transport")?;
    let t = Arc::new(Mutex::new(t));
    builder.attach_virtio(&slot, t.clone())?;
    Ok((slot.index, t))
}

fn attach_one(
    builder: &mut impl VirtioHost,
    dev: Box<dyn VirtioDevice>,
    out: &mut Transports,
) -> Result<()> {
    out.push(attach_device(builder, dev)?.1);
    Ok(())
}

/// Opens every backend and attaches the devices. Called once per boot (a
/// guest reboot rebuilds the machine after the old one has released them).
pub fn attach(builder: &mut impl VirtioHost, args: &VirtioArgs) -> Result<Transports> {
    let mut out = Vec::new();
    for d in &args.disk {
        attach_one(builder, Box::new(open_disk(d)?), &mut out)?;
    }
    for (i, n) in args.net.iter().enumerate() {
        attach_one(builder, Box::new(open_net(i, n)?), &mut out)?;
    }
    if args.rng {
        attach_one(builder, Box::new(Rng::new()), &mut out)?;
    }
    if let Some(c) = &args.virtio_console {
        attach_one(builder, Box::new(open_console(c)?), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = DiskSpec::parse("a.qcow2,format=qcow2,readonly=on,serial=SN1").unwrap();
        assert_eq!(d.path, PathBuf::from("a.qcow2"));
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("SN1"));
        let d = DiskSpec::parse("file=/x/we,,ird.img").unwrap();
        assert_eq!(d.path, PathBuf::from("/x/we,ird.img"));
        assert_eq!(d.format, None);
        assert!(!d.read_only);
        for (bad, why) in [
            ("", "PATH"),
            ("a,format=vmdk", "raw or qcow2"),
            ("a,readonly=maybe", "on or off"),
            ("a,cache=none", "unknown disk option"),
            ("a,serial=123456789012345678901", "20"),
            ("a,junk", "KEY=VALUE"),
        ] {
            let e = DiskSpec::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn net_specs() {
        let n = NetSpec::parse("tap=tap0,mac=52:54:00:aa:bb:cc").unwrap();
        assert_eq!(n.backend, NetBackend::Tap("tap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        let n = NetSpec::parse("bridge=br0").unwrap();
        assert_eq!(n.backend, NetBackend::Bridge("br0".into()));
        assert_eq!(n.mac, None);
        for (bad, why) in [
            ("", "KEY=VALUE"),
            ("mac=52:54:00:aa:bb:cc", "tap=NAME"),
            ("tap=a,bridge=b", "exactly one"),
            ("tap=waytoolonginterfacename", "15 bytes"),
            ("tap=t,mac=1:2", "MAC"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("user", "KEY=VALUE"),
            ("tap=t,model=e1000", "unknown net option"),
        ] {
            let e = NetSpec::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(default_mac(0), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(default_mac(1)[5], 0x57);
    }

    #[test]
    fn console_specs() {
        assert_eq!(
            ConsoleSpec::parse("socket=/tmp/s").unwrap(),
            ConsoleSpec::Socket("/tmp/s".into())
        );
        assert!(ConsoleSpec::parse("stdio").is_err());
        assert!(ConsoleSpec::parse("file=").is_err());
    }

    #[test]
    fn missing_disk_is_named() {
        let e = open_disk(&DiskSpec::parse("/nonexistent/disk.img").unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/disk.img"), "{e:#}");
    }
}
