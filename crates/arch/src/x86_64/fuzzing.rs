//! Entry point for fuzz/fuzz_targets/x86_boot_images.rs (header checks,
//! loading, host-side payload unpacking), also run over a
//! corpus of mutated headers by the unit tests (cargo-fuzz needs nightly).

use vm_memory::GuestMemoryMmap;

use super::boot::{inspect, load, BootImages};
use super::layout::ram_regions;

/// Arbitrary bytes as an x86-64 kernel (bzImage or ELF), inspected and then
/// loaded into a small guest: errors, never panics or writes outside RAM.
pub fn x86_boot_images(data: &[u8]) {
    if inspect("fuzz", data).is_err() {
        return;
    }
    // The host-side payload unpacker, with a small output bound.
    let _ = super::unpack::unpack("fuzz", data, 1 << 20);
    let ram = 32 << 20;
    let Ok(mem) = GuestMemoryMmap::from_ranges(&ram_regions(ram)) else {
        return;
    };
    let _ = load(
        &mem,
        &BootImages {
            label: "fuzz",
            kernel: data,
            initrd: Some(&data[..data.len().min(4096)]),
            cmdline: "console=ttyS0",
            ram_size: ram,
            cpus: 2,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid bzImage and ELF, then systematic header corruptions of each.
    #[test]
    fn corpus_does_not_panic() {
        let mut bz = vec![0u8; 5 * 512 + 4096];
        bz[0x1f1] = 4;
        bz[0x1f4..0x1f8].copy_from_slice(&256u32.to_le_bytes());
        bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x211] = 1;
        bz[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        bz[0x236] = 1;
        // A payload: an xz stream header followed by garbage, and the size.
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&64u32.to_le_bytes());
        bz[2560..2566].copy_from_slice(b"\xfd7zXZ\0");
        bz[2620..2624].copy_from_slice(&4096u32.to_le_bytes());
        let mut elf = vec![0u8; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16] = 2;
        elf[18] = 62;
        elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[52] = 64;
        elf[54] = 56; // phentsize
        elf[56] = 1; // phnum
        elf[64] = 1; // PT_LOAD
        elf[64 + 8..64 + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        elf[64 + 24..64 + 32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        elf[64 + 32..64 + 40].copy_from_slice(&0x100u64.to_le_bytes());
        elf[64 + 40..64 + 48].copy_from_slice(&0x100u64.to_le_bytes());
        for base in [bz, elf] {
            x86_boot_images(&base);
            for i in 0..0x300.min(base.len()) {
                for v in [0u8, 0xff, 0x7f, 0x80, 1] {
                    let mut m = base.clone();
                    m[i] = v;
                    x86_boot_images(&m);
                }
            }
            for cut in [0, 1, 63, 64, 0x1f1, 0x270, 2559, 2560, 2561] {
                x86_boot_images(&base[..cut.min(base.len())]);
            }
        }
    }
}
