//! Entry points for the fuzz targets (fuzz/fuzz_targets/boot_images.rs and
//! platform_mmio.rs), also run over a small corpus by the unit tests, since
//! cargo-fuzz needs nightly.

use std::sync::Arc;

use devices::{BusDevice, IrqLine};

use super::loader;
use super::plic::{Plic, PLIC_MMIO_LEN};

/// Arbitrary bytes as a kernel Image or bare-metal ELF.
pub fn boot_images(data: &[u8]) {
    let _ = loader::parse_image_header("kernel", data);
    if let Ok(elf) = loader::Elf::parse("kernel", data) {
        for s in &elf.segments {
            // The loader slices with these; they must be in bounds.
            assert!(s.offset + s.filesz <= data.len());
            assert!(s.filesz as u64 <= s.memsz);
        }
        let _ = elf.to_phys(elf.entry);
    }
    let _ = loader::elf_symbol(data, "tohost");
}

struct NoIrq;
impl IrqLine for NoIrq {
    fn set_level(&self, _: bool) {}
}

/// A guest's arbitrary MMIO accesses to the PLIC and UART: each 11-byte
/// record is (device, width, 4-byte offset, 4-byte value, is_write) plus
/// interrupt line toggles.
pub fn platform_mmio(data: &[u8]) {
    let mut plic = Plic::new(2);
    plic.connect(Box::new(|_, _, _| {}));
    let mut uart = devices::Serial::new(Box::new(std::io::sink()), Arc::new(NoIrq));
    for r in data.chunks_exact(11) {
        let width = [1usize, 2, 4, 8][(r[1] & 3) as usize];
        let off = u32::from_le_bytes([r[2], r[3], r[4], r[5]]) as u64;
        let val = u32::from_le_bytes([r[6], r[7], r[8], r[9]]) as u64;
        let write = r[10] & 1 == 1;
        let bytes = val.to_le_bytes();
        let mut buf = [0u8; 8];
        match r[0] % 4 {
            0 => {
                let off = off % PLIC_MMIO_LEN;
                if write {
                    plic.write(off, &bytes[..width]);
                } else {
                    plic.read(off, &mut buf[..width]);
                }
            }
            1 => {
                let off = off % 0x100;
                if write {
                    uart.write(off, &bytes[..width]);
                } else {
                    uart.read(off, &mut buf[..width]);
                }
            }
            2 => plic.set_level(off as u32 % 128, write),
            _ => {
                let _ = uart.enqueue(&bytes[..width]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Vec<u8>> {
        let mut v = vec![
            vec![],
            loader::tests::image(4096, 0),
            loader::tests::elf(0x8000_0000, &[0x13, 0, 0, 0], 16),
        ];
        let mut x: u64 = 1;
        for len in [11, 64, 121, 1000, 4096] {
            v.push(
                (0..len)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (x >> 33) as u8
                    })
                    .collect(),
            );
        }
        // Mutations of a valid ELF: flip each header byte.
        let elf = loader::tests::elf(0x8000_0000, &[0; 8], 8);
        for i in 0..120 {
            let mut e = elf.clone();
            e[i] ^= 0xff;
            v.push(e);
        }
        v
    }

    #[test]
    fn fuzz_bodies_survive_corpus() {
        for c in corpus() {
            boot_images(&c);
            platform_mmio(&c);
        }
    }
}
