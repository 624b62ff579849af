//! QEMU `virt`'s physical memory map, so that the same firmware and kernels
//! run unchanged.

pub const SYSCON_BASE: u64 = 0x10_0000;
pub const RTC_BASE: u64 = 0x10_1000;
pub const RTC_IRQ: u32 = 11;
/// Free slots after the RTC in QEMU's map: a SiFive GPIO controller (its pin
/// 0 is the kernel-panic LED) and QEMU's pvpanic-mmio.
pub const GPIO_BASE: u64 = 0x10_2000;
pub const GPIO_IRQ: u32 = 12;
pub const PVPANIC_BASE: u64 = 0x10_3000;
pub const CLINT_BASE: u64 = 0x200_0000;
pub const PLIC_BASE: u64 = 0xc00_0000;
pub const UART0_BASE: u64 = 0x1000_0000;
pub const UART0_IRQ: u32 = 10;
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_SIZE: u64 = 0x1000;
pub const VIRTIO_SLOTS: usize = 8;
pub const RAM_BASE: u64 = 0x8000_0000;
pub const TIMEBASE_HZ: u64 = 10_000_000;

/// Smallest RAM we accept at all (the images are checked separately).
pub const MIN_RAM: u64 = 16 << 20;
/// Largest RAM (keeps RAM below the 64 GiB mark of the 39-bit space).
pub const MAX_RAM: u64 = 32 << 30;

pub const fn virtio_base(slot: usize) -> u64 {
    VIRTIO_BASE + slot as u64 * VIRTIO_SIZE
}
pub const fn virtio_irq(slot: usize) -> u32 {
    1 + slot as u32
}
