//! Machine models. `x86_64` (x86-64 hosts only: linux-loader's bzImage/ELF
//! loaders exist there): memory map/e820, Linux and PVH boot, MP table,
//! legacy ports, for the KVM backend. `riscv64`: QEMU `virt`-compatible memory map, PLIC, syscon,
//! RTC, device tree (vm-fdt) and the firmware/kernel/initrd loaders.
//!
//! Dependencies: `vm-fdt` (device tree writer), `vm-memory` (guest RAM shared
//! with the CPU backend and devices), `libc` (getrandom for `rng-seed`),
//! `flate2`/`xz2`/`zstd` (unpacking a bzImage's payload on the host: xz2 is
//! liblzma, which decodes the x86 BCJ filter kernels are packed with). Image
//! and ELF headers are parsed here: linux-loader's RISC-V `Image` and ELF
//! loaders are only built for their native host architecture.

pub mod riscv64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
