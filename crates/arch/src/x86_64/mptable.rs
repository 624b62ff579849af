//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
//! finds its CPUs (LAPIC IDs 0..n), the IOAPIC and the ISA interrupt
//! routing. Written at the start of the EBDA, where Linux looks for it.

use super::layout::{IOAPIC, LAPIC, VIRTIO_IRQS};

/// Most CPUs one table describes (APIC IDs are 8 bits; the IOAPIC takes the
/// ID after the last CPU).
pub const MAX_CPUS: usize = 254;
const IOAPIC_PINS: u8 = 24;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

/// The floating pointer and configuration table for `cpus` CPUs, to be
/// written at guest address `at`.
pub fn build(cpus: usize, at: u64) -> Vec<u8> {
    assert!((1..=MAX_CPUS).contains(&cpus));
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = id as u8;
        e[2] = 0x14; // LAPIC version
        e[3] = 1 | if id == 0 { 2 } else { 0 }; // enabled, bootstrap
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes()); // family 6
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend(e);
        count += 1;
    }
    entries.extend([1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0: ISA
    count += 1;
    let mut io = [2u8, ioapic_id, 0x11, 1, 0, 0, 0, 0];
    io[4..8].copy_from_slice(&(IOAPIC as u32).to_le_bytes());
    entries.extend(io);
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // virtio-mmio lines are level-triggered, active high; the rest
        // conform to the ISA bus (edge, active high).
        let flags: u16 = if VIRTIO_IRQS.contains(&(pin as u32)) {
            0b1101
        } else {
            0
        };
        let f = flags.to_le_bytes();
        entries.extend([3, 0, f[0], f[1], 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI; to every LAPIC.
    entries.extend([4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend([4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = vec![0u8; 44];
    table[0..4].copy_from_slice(b"PCMP");
    let len = (44 + entries.len()) as u16;
    table[4..6].copy_from_slice(&len.to_le_bytes());
    table[6] = 4; // spec revision 1.4
    table[8..16].copy_from_slice(b"FERRO   ");
    table[16..28].copy_from_slice(b"KVM x86-64  ");
    table[34..36].copy_from_slice(&count.to_le_bytes());
    table[36..40].copy_from_slice(&(LAPIC as u32).to_le_bytes());
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&((at + 16) as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4;
    fp[10] = checksum(&fp);
    let mut out = fp.to_vec();
    out.extend(table);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(4, 0x9fc00);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[0..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(cfg.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let cpus = (0..4).filter(|i| cfg[44 + 20 * i] == 0).count();
        assert_eq!(cpus, 4);
        assert_eq!(cfg[44 + 3], 3); // BSP flag on CPU 0 only
        assert_eq!(cfg[64 + 3], 1);
        // 32 CPUs still fit in the EBDA's last KiB.
        assert!(build(32, 0x9fc00).len() <= 0x400);
    }
}
