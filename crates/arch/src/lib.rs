//! Machine models. `riscv64`: QEMU `virt`-compatible memory map, PLIC, syscon,
//! RTC, device tree (vm-fdt) and the firmware/kernel/initrd loaders.
//!
//! Dependencies: `vm-fdt` (device tree), `linux-loader` (ELF/Image loading).
