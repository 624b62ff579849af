//! `ferro guest mkdisk`: a bootable root disk for the default guest. The tree
//! (BusyBox, its init configuration, the kernel modules) is staged in a
//! temporary folder and turned into ext4 by `mke2fs -d`, which needs neither
//! root nor loop devices; the result is written out through the block crate
//! as qcow2 (only non-zero clusters, so the image stays small) or raw.
//!
//! Boot it with `ferro run --disk DISK --append "console=ttyS0 root=/dev/vda"`:
//! the default initramfs loads virtio-blk and ext4 and switches root to it.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What `mkdisk` builds.
#[derive(Debug, Clone)]
pub struct MkdiskOptions {
    pub output: PathBuf,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub format: block::Format,
}

const INITTAB: &str = "::sysinit:/etc/init.d/rcS\n\
::respawn:/bin/cttyhack /bin/sh -l\n\
::ctrlaltdel:/sbin/reboot\n\
::shutdown:/bin/sync\n\
::shutdown:/bin/umount -a -r\n";

/// First-boot work happens in the guest: BusyBox installs its applet links
/// on the (writable) disk itself.
const RCS: &str = "#!/bin/sh\n\
/bin/busybox --install -s\n\
mount -o remount,rw / 2>/dev/null\n\
mount -t proc proc /proc 2>/dev/null\n\
mount -t sysfs sysfs /sys 2>/dev/null\n\
mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
mkdir -p /dev/pts /dev/shm\n\
mount -t devpts devpts /dev/pts 2>/dev/null\n\
mount -t tmpfs tmpfs /tmp\n\
mount -t tmpfs tmpfs /run\n\
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m.ko 2>/dev/null; done\n\
hostname ferro\n\
echo \"Ferrovisor root disk ($(uname -r)). 'poweroff' ends the VM.\"\n";

const PROFILE: &str = "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1='ferro:\\w# '\nexport HOME=/root\ncd /\n";

fn write_file(root: &Path, rel: &str, mode: u32, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel.trim_start_matches('/'));
    std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Lays out the root filesystem tree under `root`.
pub fn stage_tree(root: &Path, busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "mnt",
        "var",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    write_file(root, "bin/busybox", 0o755, busybox)?;
    // The links init needs before `busybox --install` has run.
    for (link, target) in [
        ("bin/sh", "busybox"),
        ("sbin/init", "../bin/busybox"),
        ("bin/mount", "busybox"),
        ("bin/umount", "busybox"),
        ("bin/sync", "busybox"),
        ("bin/cttyhack", "busybox"),
        ("sbin/reboot", "../bin/busybox"),
        ("sbin/poweroff", "../bin/busybox"),
    ] {
        symlink(target, root.join(link))?;
    }
    write_file(root, "etc/inittab", 0o644, INITTAB.as_bytes())?;
    let rcs = format!("{RCS}{}", crate::AGENT_SH);
    write_file(root, "etc/init.d/rcS", 0o755, rcs.as_bytes())?;
    write_file(root, "etc/profile", 0o644, PROFILE.as_bytes())?;
    write_file(
        root,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    )?;
    write_file(root, "etc/group", 0o644, b"root:x:0:\n")?;
    write_file(root, "etc/hostname", 0o644, b"ferro\n")?;
    let mut order = String::new();
    for (name, data) in modules {
        write_file(root, &format!("lib/modules/{name}.ko"), 0o644, data)?;
        order.push_str(name);
        order.push('\n');
    }
    write_file(root, "lib/modules/load-order", 0o644, order.as_bytes())?;
    Ok(())
}

/// Runs `mke2fs -d` over `tree` into the raw file `raw` (sized `size`).
pub fn make_ext4(tree: &Path, raw: &Path, size: u64) -> Result<()> {
    let f =
        std::fs::File::create(raw).with_context(|| format!("cannot create {}", raw.display()))?;
    f.set_len(size)?;
    drop(f);
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "ferro-root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(raw)
        .output()
        .context("cannot run mke2fs (install e2fsprogs: scripts/deps)")?;
    if !out.status.success() {
        bail!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copies the raw file into a new image at `out`, skipping all-zero chunks.
fn write_image(raw: &Path, opts: &MkdiskOptions) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let create = block::CreateOptions {
        format: Some(opts.format),
        size: Some(opts.size),
        ..Default::default()
    };
    block::create(&opts.output, &create)
        .with_context(|| format!("cannot create {}", opts.output.display()))?;
    let mut img = block::open(
        &opts.output,
        &block::OpenOptions {
            format: Some(opts.format),
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open {}", opts.output.display()))?;
    let src = std::fs::File::open(raw)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < opts.size {
        let n = (opts.size - off).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], off)?;
        if buf[..n].iter().any(|&b| b != 0) {
            img.write_at(&buf[..n], off)
                .with_context(|| format!("writing {}", opts.output.display()))?;
        }
        off += n as u64;
    }
    img.flush()
        .with_context(|| format!("flushing {}", opts.output.display()))?;
    Ok(())
}

/// Builds the disk from a BusyBox binary and modules.
pub fn build_disk(
    busybox: &[u8],
    modules: &[(String, Vec<u8>)],
    opts: &MkdiskOptions,
) -> Result<()> {
    if opts.size < 16 << 20 {
        bail!("disk size {} is too small: at least 16 MiB", opts.size);
    }
    if opts.output.exists() {
        bail!("{} already exists; not overwriting", opts.output.display());
    }
    let parent = opts
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".ferro-mkdisk")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a work folder in {}", parent.display()))?;
    let tree = work.path().join("root");
    std::fs::create_dir(&tree)?;
    stage_tree(&tree, busybox, modules)?;
    let raw = work.path().join("disk.raw");
    make_ext4(&tree, &raw, opts.size)?;
    if opts.format == block::Format::Raw {
        std::fs::rename(&raw, &opts.output)
            .with_context(|| format!("cannot write {}", opts.output.display()))?;
        return Ok(());
    }
    let r = write_image(&raw, opts);
    if r.is_err() {
        let _ = std::fs::remove_file(&opts.output);
    }
    r
}

/// Parses a disk size like qemu-img: bytes, or a K/M/G/T suffix.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: expected e.g. 512M or 2G"))?;
    let shift = match unit {
        "" | "B" | "b" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => bail!("invalid size {s:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugfs(img: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", cmd])
            .arg(img)
            .output()
            .expect("debugfs (e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn raw_disk_holds_a_clean_ext4_with_busybox_and_modules() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("root.img");
        let mods = vec![
            ("virtio_blk".to_string(), b"fake-ko-1".to_vec()),
            ("ext4".to_string(), b"fake-ko-2".to_vec()),
        ];
        let opts = MkdiskOptions {
            output: out.clone(),
            size: 32 << 20,
            format: block::Format::Raw,
        };
        build_disk(b"\x7fELF-not-really-busybox", &mods, &opts).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 32 << 20);
        let fsck = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        assert!(debugfs(&out, "cat /bin/busybox").contains("not-really-busybox"));
        assert!(debugfs(&out, "cat /lib/modules/load-order").contains("virtio_blk\next4"));
        assert!(debugfs(&out, "stat /sbin/init").contains("Fast link dest: \"../bin/busybox\""));
        assert!(debugfs(&out, "cat /etc/inittab").contains("/etc/init.d/rcS"));
        // No leftovers next to the output, and no overwriting.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(build_disk(b"x", &mods, &opts)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999T").is_err());
        let e = build_disk(
            b"x",
            &[],
            &MkdiskOptions {
                output: "/tmp/never".into(),
                size: 1 << 20,
                format: block::Format::Raw,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("too small"));
    }
}
