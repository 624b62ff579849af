//! Builds the freestanding x86-64 test guest (guest.c + guest.ld) with gcc,
//! in three shapes: an ELF with the 64-bit entry, an ELF with a PVH note,
//! and a bzImage wrapping the same code (setup header + flat payload).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Guests {
    pub elf64: PathBuf,
    pub pvh: PathBuf,
    pub bzimage: PathBuf,
    pub dir: PathBuf,
}

fn gcc(out: &Path, extra: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kvm_guest");
    let st = Command::new("gcc")
        .args([
            "-O2",
            "-ffreestanding",
            "-nostdlib",
            "-fno-pic",
            "-no-pie",
            "-static",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-Wl,-z,max-page-size=0x1000",
        ])
        .args(extra)
        .arg("-T")
        .arg(src.join("guest.ld"))
        .arg("-o")
        .arg(out)
        .arg(src.join("guest.c"))
        .status()
        .expect("gcc is needed to build the KVM test guests (scripts/deps installs it)");
    assert!(st.success(), "gcc failed building {}", out.display());
}

/// A bzImage: 4 setup sectors after the boot sector, header at 0x1f1 with
/// protocol `version`, then the guest's flat image (loaded at 1 MiB, 64-bit
/// entry at +0x200).
pub fn bzimage(payload: &[u8], version: u16, xloadflags: u16) -> Vec<u8> {
    let mut k = vec![0u8; 5 * 512];
    k[0x1f1] = 4;
    let syssize = payload.len().div_ceil(16) as u32;
    k[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    k[0x211] = 1; // LOADED_HIGH
    k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    k[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    k[0x260..0x264].copy_from_slice(&(1u32 << 20).to_le_bytes());
    k.extend_from_slice(payload);
    // syssize counts 16-byte units: pad to a whole one.
    k.resize(5 * 512 + syssize as usize * 16, 0);
    k
}

pub fn guests() -> &'static Guests {
    static G: OnceLock<Guests> = OnceLock::new();
    G.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvm-guests");
        std::fs::create_dir_all(&dir).unwrap();
        let g = Guests {
            elf64: dir.join("guest64.elf"),
            pvh: dir.join("guest-pvh.elf"),
            bzimage: dir.join("guest.bzImage"),
            dir: dir.clone(),
        };
        gcc(&g.elf64, &[]);
        gcc(&g.pvh, &["-DPVH"]);
        let flat = dir.join("guest64.bin");
        let st = Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&g.elf64)
            .arg(&flat)
            .status()
            .expect("objcopy (binutils) is needed");
        assert!(st.success());
        let payload = std::fs::read(&flat).unwrap();
        std::fs::write(&g.bzimage, bzimage(&payload, 0x020f, 1)).unwrap();
        g
    })
}

/// The guest's FNV-1a, as it prints for the initrd.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
