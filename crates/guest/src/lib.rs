//! The default guest, built from Debian's own riscv64 packages: apt fetches
//! them with a temporary sources list (mirror taken from the host's apt
//! configuration), and we build the initramfs and disk images, cached under
//! `$XDG_CACHE_HOME/ferro`.
//!
//! Dependencies: `indicatif` (progress display while fetching), `flate2`
//! (gzip initramfs), `lzma-rs` (pure-Rust xz, for Debian's compressed kernel
//! modules), `tempfile` (`mkdisk`'s staging folder, removed on every exit
//! path).

pub mod apt;
pub mod cpio;
pub mod disk;
pub mod modules;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `ferro guest …` arguments.
#[derive(clap::Args, Debug)]
pub struct GuestArgs {
    #[command(subcommand)]
    pub cmd: GuestCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum GuestCmd {
    /// Download Debian's riscv64 kernel, BusyBox and OpenSBI and build the initramfs.
    Fetch {
        /// Fetch again even if the cache is complete.
        #[arg(long)]
        force: bool,
    },
    /// Print where the cached default guest's files are.
    Path,
    /// Build an initramfs (BusyBox + modules) around your own init script.
    Initramfs {
        /// Script or program to install as /init.
        #[arg(long)]
        init: PathBuf,
        /// Output file (gzip'd newc cpio).
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Build a root disk (ext4 with BusyBox and the modules) for the default
    /// guest; boot it with `ferro run --disk FILE --append "console=ttyS0 root=/dev/vda"`.
    Mkdisk {
        /// Output image (must not exist).
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Virtual size (K/M/G suffixes).
        #[arg(long, default_value = "256M")]
        size: String,
        /// Image format.
        #[arg(long, short = 'f', default_value = "qcow2", value_parser = ["qcow2", "raw"])]
        format: String,
    },
}

pub fn main(args: GuestArgs) -> Result<i32> {
    match args.cmd {
        GuestCmd::Fetch { force } => {
            let g = if force { fetch()? } else { ensure()? };
            g.print_paths();
            Ok(0)
        }
        GuestCmd::Path => {
            DefaultGuest::cached()?.print_paths();
            Ok(0)
        }
        GuestCmd::Initramfs { init, output } => {
            let script = std::fs::read_to_string(&init)
                .with_context(|| format!("cannot read init script {}", init.display()))?;
            let img = DefaultGuest::cached()?.initramfs(&script, &[])?;
            std::fs::write(&output, img)
                .with_context(|| format!("cannot write {}", output.display()))?;
            Ok(0)
        }
        GuestCmd::Mkdisk {
            output,
            size,
            format,
        } => {
            let g = ensure()?;
            let busybox = std::fs::read(&g.busybox)
                .with_context(|| format!("cannot read {}", g.busybox.display()))?;
            let opts = disk::MkdiskOptions {
                output,
                size: disk::parse_size(&size)?,
                format: if format == "raw" {
                    block::Format::Raw
                } else {
                    block::Format::Qcow2
                },
            };
            disk::build_disk(&busybox, &g.modules()?, &opts)?;
            println!("{}", opts.output.display());
            Ok(0)
        }
    }
}

/// Kernel command line the default guest boots with.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Shell prompt of the default guest (tests wait for it).
pub const PROMPT: &str = "ferro:/# ";

/// `$XDG_CACHE_HOME/ferro`, else `~/.cache/ferro`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("ferro"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CACHE_HOME nor HOME is set: cannot locate the cache folder")?;
    Ok(PathBuf::from(home).join(".cache/ferro"))
}

const GUEST_DIR: &str = "debian-trixie-riscv64";
const READY: &str = "READY";

/// The cached default guest's files.
#[derive(Debug, Clone)]
pub struct DefaultGuest {
    pub dir: PathBuf,
    /// Linux `Image` from linux-image-riscv64.
    pub kernel: PathBuf,
    /// gzip'd newc initramfs with BusyBox, modules and the default init.
    pub initrd: PathBuf,
    /// OpenSBI `fw_dynamic.bin`.
    pub firmware: PathBuf,
    /// OpenSBI `fw_jump.bin`.
    pub fw_jump: PathBuf,
    /// Static BusyBox for riscv64.
    pub busybox: PathBuf,
    /// `<name>.ko` files and `load-order`.
    pub modules_dir: PathBuf,
}

impl DefaultGuest {
    fn at(dir: PathBuf) -> Self {
        DefaultGuest {
            kernel: dir.join("Image"),
            initrd: dir.join("initramfs.cpio.gz"),
            firmware: dir.join("fw_dynamic.bin"),
            fw_jump: dir.join("fw_jump.bin"),
            busybox: dir.join("busybox"),
            modules_dir: dir.join("modules"),
            dir,
        }
    }

    /// The cached guest, or an error saying how to get it. An initramfs built
    /// by an older ferro (different init or files) is rebuilt here, from the
    /// cached BusyBox and modules.
    pub fn cached() -> Result<Self> {
        let dir = cache_dir()?.join(GUEST_DIR);
        let ready = std::fs::read_to_string(dir.join(READY)).unwrap_or_default();
        if !ready.contains(&fetch_stamp()) {
            bail!(
                "the default guest is not in the cache ({}): run `ferro guest fetch`",
                dir.display()
            );
        }
        let g = Self::at(dir);
        let stamp = g.dir.join("initramfs.stamp");
        let current = || std::fs::read_to_string(&stamp).unwrap_or_default() == initramfs_stamp();
        if !current() {
            // Several ferro processes may notice at once: one rebuilds.
            let _lock = Lock::take(&cache_dir()?.join(".lock"))?;
            if current() {
                return Ok(g);
            }
            let img = g.initramfs(DEFAULT_INIT, &[])?;
            let tmp = g.dir.join(format!("initramfs.tmp{}", std::process::id()));
            std::fs::write(&tmp, img)?;
            std::fs::rename(&tmp, &g.initrd)?;
            std::fs::write(&stamp, initramfs_stamp())?;
        }
        Ok(g)
    }

    fn print_paths(&self) {
        println!("kernel    {}", self.kernel.display());
        println!("initrd    {}", self.initrd.display());
        println!("firmware  {}", self.firmware.display());
        println!("busybox   {}", self.busybox.display());
        println!("modules   {}", self.modules_dir.display());
    }

    /// Modules in load order.
    pub fn modules(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let order = std::fs::read_to_string(self.modules_dir.join("load-order"))
            .context("cached module list is missing: run `ferro guest fetch --force`")?;
        order
            .split_whitespace()
            .map(|n| {
                let p = self.modules_dir.join(format!("{n}.ko"));
                Ok((
                    n.to_string(),
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
                ))
            })
            .collect()
    }

    /// Builds a gzip'd initramfs holding BusyBox, the modules, `init` as
    /// `/init` and `extra` files `(path, mode, bytes)`.
    pub fn initramfs(&self, init: &str, extra: &[(&str, u32, Vec<u8>)]) -> Result<Vec<u8>> {
        let busybox = std::fs::read(&self.busybox)
            .with_context(|| format!("cannot read {}", self.busybox.display()))?;
        build_initramfs(&busybox, &self.modules()?, init, extra)
    }
}

/// Shell lines shared by the default guest's `/init` and the root disk's
/// rcS (docs/CONTROL.md): `/etc/machine-id` from the machine UUID (device
/// tree `serial-number`) when empty, and, when `ferro run --control` added
/// the agent channel (named in `/chosen`), the agent: the last hvc that
/// opens is its port, and the line `poweroff` there powers the guest off.
#[macro_export]
macro_rules! guest_agent_sh {
    () => {
        r#"if [ ! -s /etc/machine-id ] && [ -r /proc/device-tree/serial-number ]; then
    id=$(tr -dc '0-9a-f' < /proc/device-tree/serial-number)
    [ ${#id} -eq 32 ] && echo "$id" > /etc/machine-id
fi
if [ -e /proc/device-tree/chosen/ferrovisor,agent-console ]; then
    (
        for n in 7 6 5 4 3 2 1 0; do
            ( : < /dev/hvc$n ) 2>/dev/null && break
        done
        exec < /dev/hvc$n > /dev/null 2>&1
        stty -echo
        while read -r cmd; do
            [ "$cmd" = poweroff ] && poweroff
        done
    ) &
fi
"#
    };
}

/// [`guest_agent_sh!`] as a string.
pub const AGENT_SH: &str = guest_agent_sh!();

/// The default guest's `/init`: mounts, modules, the root-disk hook, then
/// BusyBox init with a shell on the console (so `poweroff` works).
pub const DEFAULT_INIT: &str = concat!(
    r#"#!/bin/busybox sh
# Ferrovisor default guest: set up, optionally switch to a root disk, then
# hand over to BusyBox init (which runs a shell on the console).
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# The panic LED (leds_gpio; see the machine's device tree) is how ferro
# learns that the kernel crashed: load it first.
[ -f /lib/modules/leds_gpio.ko ] && insmod /lib/modules/leds_gpio.ko 2>/dev/null
# Modules load on demand (each costs seconds under emulation): the virtio
# transport always, then drivers for the virtio devices actually present.
# `ferro.modules=all` on the command line loads every module.
modload() {
    [ -d "/sys/module/$1" ] && return 0
    for d in $(sed -n "s/^$1://p" /lib/modules/deps); do modload "$d"; done
    [ -f "/lib/modules/$1.ko" ] && insmod "/lib/modules/$1.ko" 2>/dev/null
    return 0
}
if grep -q 'ferro.modules=all' /proc/cmdline; then
    for m in $(cat /lib/modules/load-order); do modload "$m"; done
fi
modload virtio_mmio
for dev in /sys/bus/virtio/devices/*; do
    [ -r "$dev/device" ] || continue
    case $(cat "$dev/device") in
        0x0001) modload virtio_net ;;
        0x0002) modload virtio_blk; modload crc32c_generic; modload ext4 ;;
        0x0004) modload virtio_rng ;;
    esac
done
hostname ferro

# Root-disk hook: `root=/dev/vdX [rootfstype=ext4] [init=/sbin/init]` on the
# kernel command line switches to that disk (virtio-blk), if it has an init.
root= fstype=ext4 rinit=/sbin/init
for a in $(cat /proc/cmdline); do
    case "$a" in
        root=*) root=${a#root=} ;;
        rootfstype=*) fstype=${a#rootfstype=} ;;
        init=*) rinit=${a#init=} ;;
    esac
done
if [ -n "$root" ]; then
    modload "$fstype"
    n=0
    while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    mkdir -p /newroot
    if mount -t "$fstype" "$root" /newroot; then
        if [ -e "/newroot$rinit" ] || [ -L "/newroot$rinit" ]; then
            mount --move /dev /newroot/dev 2>/dev/null || mount -t devtmpfs devtmpfs /newroot/dev
            umount /dev/pts /tmp /run 2>/dev/null
            mount --move /proc /newroot/proc 2>/dev/null
            mount --move /sys /newroot/sys 2>/dev/null
            exec switch_root /newroot "$rinit"
        fi
        echo "ferro-init: $root has no $rinit; staying in the initramfs"
        umount /newroot
    else
        echo "ferro-init: cannot mount $root ($fstype); staying in the initramfs"
    fi
fi
"#,
    guest_agent_sh!(),
    r#"echo
echo "Ferrovisor default guest (Debian kernel $(uname -r), BusyBox). 'poweroff' ends the VM; Ctrl-A X quits."
exec /sbin/init
"#
);

const INITTAB: &str = "::respawn:/bin/cttyhack /bin/sh -l\n\
::ctrlaltdel:/sbin/reboot\n\
::shutdown:/bin/umount -a -r 2>/dev/null\n";

const PROFILE: &str = "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1='ferro:\\w# '\nexport HOME=/root\ncd /\n";

fn fnv(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Identifies what `fetch` collects (the module list): a change refetches.
fn fetch_stamp() -> String {
    module_stamp(modules::WANTED)
}

fn module_stamp(list: &[&str]) -> String {
    format!("modules {}", fnv(list))
}

/// READY's stamp lines: one per prefix of the module list, so that older
/// ferro binaries sharing this cache (their list is a prefix: entries are
/// only appended) accept it instead of fetching again in turn.
fn ready_stamps() -> String {
    (1..=modules::WANTED.len())
        .map(|n| module_stamp(&modules::WANTED[..n]) + "\n")
        .collect()
}

/// Identifies the default initramfs's contents: a change rebuilds it.
fn initramfs_stamp() -> String {
    fnv(&[DEFAULT_INIT, INITTAB, PROFILE])
}

/// Builds a gzip'd newc initramfs (see [`DefaultGuest::initramfs`]).
pub fn build_initramfs(
    busybox: &[u8],
    modules: &[(String, Vec<u8>)],
    init: &str,
    extra: &[(&str, u32, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut c = cpio::Cpio::new();
    for d in [
        "/",
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/run",
        "/mnt",
        "/root",
        "/newroot",
        "/etc",
        "/lib",
        "/lib/modules",
    ] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    c.char_dev("/dev/console", 0o600, 5, 1);
    c.file("/bin/busybox", 0o755, busybox);
    c.symlink("/bin/sh", "busybox");
    c.file("/init", 0o755, init.as_bytes());
    c.file("/etc/inittab", 0o644, INITTAB.as_bytes());
    c.file("/etc/profile", 0o644, PROFILE.as_bytes());
    c.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("/etc/group", 0o644, b"root:x:0:\n");
    let mut order = String::new();
    for (name, data) in modules {
        c.file(&format!("/lib/modules/{name}.ko"), 0o644, data);
        order.push_str(name);
        order.push('\n');
    }
    c.file("/lib/modules/load-order", 0o644, order.as_bytes());
    // Direct dependencies, `name: dep dep`, for the init's on-demand loader.
    let deps: String = modules
        .iter()
        .map(|(name, data)| format!("{name}: {}\n", modules::depends(data).join(" ")))
        .collect();
    c.file("/lib/modules/deps", 0o644, deps.as_bytes());
    for (path, mode, data) in extra {
        c.file(path, *mode, data);
    }
    cpio::gzip(&c.finish()).context("cannot compress the initramfs")
}

/// The cached default guest, fetching it first if needed.
pub fn ensure() -> Result<DefaultGuest> {
    match DefaultGuest::cached() {
        Ok(g) => Ok(g),
        Err(_) => fetch_locked(false),
    }
}

struct Progress {
    pb: Option<indicatif::ProgressBar>,
    steps: u64,
    step: u64,
}

impl Progress {
    fn new(steps: u64) -> Self {
        use std::io::IsTerminal;
        let pb = std::io::stderr().is_terminal().then(|| {
            let pb = indicatif::ProgressBar::new(steps);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} default guest [{pos}/{len}] {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        Progress { pb, steps, step: 0 }
    }
    fn step(&mut self, msg: String) {
        self.step += 1;
        match &self.pb {
            Some(pb) => {
                pb.set_position(self.step - 1);
                pb.set_message(msg);
            }
            None => eprintln!("ferro: default guest [{}/{}] {msg}", self.step, self.steps),
        }
    }
    fn done(self, msg: &str) {
        match &self.pb {
            Some(pb) => pb.finish_with_message(msg.to_string()),
            None => eprintln!("ferro: {msg}"),
        }
    }
}

fn find_one(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix))
        })
        .collect();
    v.sort();
    v.pop()
}

/// Holds an exclusive lock on the cache while fetching.
struct Lock(#[allow(dead_code)] std::fs::File);
impl Lock {
    fn take(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; released when `f` closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Lock(f))
    }
}

/// Downloads the packages and (re)builds the cached default guest.
pub fn fetch() -> Result<DefaultGuest> {
    fetch_locked(true)
}

fn fetch_locked(force: bool) -> Result<DefaultGuest> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let lock = Lock::take(&cache.join(".lock"))?;
    // Another ferro may have fetched while we waited for the lock.
    if !force {
        drop(lock);
        if let Ok(g) = DefaultGuest::cached() {
            return Ok(g);
        }
        return fetch_locked(true);
    }
    let mut p = Progress::new(5);
    let mirror = apt::host_mirror()?;
    let apt = apt::Apt::new(&cache.join("apt"), &mirror)?;
    p.step(format!(
        "apt-get update ({} {} {})",
        mirror.uri,
        apt::SUITE,
        apt::ARCH
    ));
    apt.update()?;
    let kpkg = apt.resolve_dep("linux-image-riscv64", "linux-image-")?;
    let pkgs = vec![
        kpkg.clone(),
        "busybox-static".to_string(),
        "opensbi".to_string(),
    ];
    p.step(format!("downloading {}", pkgs.join(", ")));
    let debs = apt.download(&pkgs)?;
    p.step("extracting packages".into());
    let x = cache.join("extract.tmp");
    let _ = std::fs::remove_dir_all(&x);
    for d in &debs {
        apt::extract(d, &x)?;
    }
    let stage = cache.join(format!("{GUEST_DIR}.tmp"));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("modules"))?;
    let g = DefaultGuest::at(stage.clone());

    let kernel = find_one(&x.join("boot"), "vmlinu")
        .with_context(|| format!("{kpkg} contains no kernel image in /boot"))?;
    let k = std::fs::read(&kernel)?;
    if k.get(56..60) != Some(b"RSC\x05") {
        bail!("{} is not a RISC-V Linux Image", kernel.display());
    }
    std::fs::write(&g.kernel, &k)?;
    let sbi = x.join("usr/lib/riscv64-linux-gnu/opensbi/generic");
    std::fs::copy(sbi.join("fw_dynamic.bin"), &g.firmware)
        .context("opensbi has no fw_dynamic.bin")?;
    std::fs::copy(sbi.join("fw_jump.bin"), &g.fw_jump).context("opensbi has no fw_jump.bin")?;
    let bb = [x.join("usr/bin/busybox"), x.join("bin/busybox")]
        .into_iter()
        .find(|p| p.exists())
        .context("busybox-static contains no busybox binary")?;
    std::fs::copy(&bb, &g.busybox)?;

    p.step("collecting kernel modules".into());
    let mroot = [x.join("usr/lib/modules"), x.join("lib/modules")]
        .into_iter()
        .find_map(|d| find_one(&d, ""))
        .with_context(|| format!("{kpkg} contains no modules directory"))?;
    let mods = modules::collect(&mroot, modules::WANTED)?;
    let mut order = String::new();
    for (n, data) in &mods {
        std::fs::write(g.modules_dir.join(format!("{n}.ko")), data)?;
        order.push_str(n);
        order.push('\n');
    }
    std::fs::write(g.modules_dir.join("load-order"), order)?;

    p.step("building the initramfs".into());
    let initrd = g.initramfs(DEFAULT_INIT, &[])?;
    std::fs::write(&g.initrd, initrd)?;
    std::fs::write(stage.join("initramfs.stamp"), initramfs_stamp())?;
    std::fs::write(
        stage.join(READY),
        format!("{}\n{}", pkgs.join("\n"), ready_stamps()),
    )?;

    let dir = cache.join(GUEST_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&stage, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&x);
    for d in debs {
        let _ = std::fs::remove_file(d);
    }
    p.done(&format!("default guest ready in {}", dir.display()));
    Ok(DefaultGuest::at(dir))
}
