//! The x86-64 machine's guest-physical memory map and its e820 table.
//!
//! RAM below the 32-bit MMIO hole ([`MMIO_HOLE_START`], 3 GiB, up to 4 GiB)
//! stays there; whatever does not fit goes above 4 GiB. Low fixed
//! structures (GDT, PVH start info, zero page, page tables, MP table) sit
//! below 1 MiB; the kernel loads at 1 MiB.

use vm_memory::GuestAddress;

pub const GDT: u64 = 0x500;
pub const PVH_START_INFO: u64 = 0x6000;
pub const PVH_MODLIST: u64 = 0x6040;
pub const PVH_MEMMAP: u64 = 0x6080;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4, one PDPT, four PDs: an identity map of the low 4 GiB (2 MiB pages).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const CMDLINE: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the extended BIOS data area; the MP table lives there (Linux
/// scans the last KiB of base memory for it).
pub const EBDA: u64 = 0x9_fc00;
pub const HIGH_RAM: u64 = 0x10_0000;
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;

pub const IOAPIC: u64 = 0xfec0_0000;
pub const LAPIC: u64 = 0xfee0_0000;

/// virtio-mmio windows: one 4 KiB page each in the MMIO hole.
pub const VIRTIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_SIZE: u64 = 0x1000;
/// IOAPIC pins for virtio slots (skipping the legacy ISA users 0-4, 8, 12-15).
pub const VIRTIO_IRQS: [u32; 14] = [5, 6, 7, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23];

/// The COM1 16550.
pub const COM1: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Guest RAM as (start, size) pieces: below the hole, then above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_HOLE_START);
    let mut v = vec![(GuestAddress(0), low as usize)];
    if size > low {
        v.push((GuestAddress(FOUR_GIB), (size - low) as usize));
    }
    v
}

/// The e820 map handed to the guest: (addr, size, type).
pub fn e820(size: u64) -> Vec<(u64, u64, u32)> {
    let low = size.min(MMIO_HOLE_START);
    let mut v = vec![
        (0, EBDA, E820_RAM),
        (EBDA, 0x10_0000 - EBDA, E820_RESERVED),
        (HIGH_RAM, low - HIGH_RAM, E820_RAM),
    ];
    if size > low {
        v.push((FOUR_GIB, size - low, E820_RAM));
    }
    v
}

/// The highest RAM address below the MMIO hole (exclusive).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_split_around_the_hole() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), 3 << 30),
                (GuestAddress(FOUR_GIB), 1 << 30)
            ]
        );
        let e = e820(4 << 30);
        assert_eq!(e.last(), Some(&(FOUR_GIB, 1 << 30, E820_RAM)));
        assert_eq!(e[2], (HIGH_RAM, (3 << 30) - HIGH_RAM, E820_RAM));
        let total: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        assert_eq!(total, (4 << 30) - (0x10_0000 - EBDA));
        // Exactly at the hole: nothing above 4 GiB.
        assert_eq!(ram_regions(3 << 30).len(), 1);
    }
}
