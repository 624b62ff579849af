//! Loading a Linux kernel the way the x86 boot protocol says, through
//! linux-loader: a bzImage (64-bit entry at load + 0x200, `boot_params` in
//! RSI with the image's setup header copied in), an ELF vmlinux with a PVH
//! note (32-bit entry, `hvm_start_info` in RBX), or an ELF without one (its
//! entry point in 64-bit mode with `boot_params`, like Firecracker). Also
//! the command line, initrd, GDT and identity page tables.
//!
//! Everything about the image is checked by [`inspect`] before guest memory
//! is touched, so bad input fails before any vCPU exists.

use std::io::Cursor;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {0}: not a Linux kernel (no bzImage 'HdrS' header and no ELF header)")]
    NotAKernel(String),
    #[error("kernel {label}: truncated bzImage: {got} bytes of compressed kernel, the header says {want}")]
    Truncated { label: String, got: u64, want: u64 },
    #[error("kernel {label}: unsupported boot protocol: {why}")]
    Unsupported { label: String, why: String },
    #[error("kernel {label}: needs {need_mib} MiB of RAM below 3 GiB to unpack; raise --memory")]
    TooBig { label: String, need_mib: u64 },
    #[error("kernel {label}: {why}")]
    Load { label: String, why: String },
    #[error("kernel command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "initrd ({size} bytes) does not fit below {limit:#x} after the kernel; raise --memory"
    )]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("guest memory: {0}")]
    Memory(String),
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    BzImage {
        version: u16,
        /// Bytes the kernel needs from its load address to unpack.
        init_size: u64,
        initrd_addr_max: u64,
        cmdline_max: usize,
    },
    Elf,
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit mode, paging on (identity map), RSI = zero page.
    Linux64 { rip: u64, zero_page: u64 },
    /// 32-bit protected mode, paging off, RBX = hvm_start_info.
    Pvh { rip: u64, start_info: u64 },
}

/// Where the boot images ended up (tests check these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    pub entry: Entry,
    pub kernel_start: u64,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
    pub cmdline: u64,
}

const SETUP_HEADER: usize = 0x1f1;
const XLF_KERNEL_64: u16 = 1;
const LOADED_HIGH: u8 = 1;
/// The first protocol with `xloadflags` (and so XLF_KERNEL_64).
const MIN_PROTOCOL: u16 = 0x020c;
const ELF_MACHINE_X86_64: u16 = 62;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Classifies and validates a kernel image without loading it.
pub fn inspect(label: &str, k: &[u8]) -> Result<KernelKind, Error> {
    if k.len() >= 64 && &k[..4] == b"\x7fELF" {
        let unsupported = |why: String| Error::Unsupported {
            label: label.into(),
            why,
        };
        if k[4] != 2 || k[5] != 1 {
            return Err(unsupported(
                "ELF is not 64-bit little-endian (an x86-64 vmlinux is)".into(),
            ));
        }
        let machine = le16(k, 18);
        if machine != ELF_MACHINE_X86_64 {
            return Err(unsupported(format!(
                "ELF for machine {machine}, not x86-64 (62)"
            )));
        }
        return Ok(KernelKind::Elf);
    }
    let hdr_end =
        SETUP_HEADER + std::mem::size_of::<linux_loader::loader::bootparam::setup_header>();
    if k.len() < hdr_end || &k[0x202..0x206] != b"HdrS" {
        return Err(Error::NotAKernel(label.into()));
    }
    let unsupported = |why: String| Error::Unsupported {
        label: label.into(),
        why,
    };
    if le16(k, 0x1fe) != 0xaa55 {
        return Err(unsupported("bzImage boot_flag is not 0xaa55".into()));
    }
    let version = le16(k, 0x206);
    if version < MIN_PROTOCOL {
        return Err(unsupported(format!(
            "boot protocol {}.{:02} has no 64-bit entry; need 2.12 or newer",
            version >> 8,
            version & 0xff
        )));
    }
    let loadflags = k[0x211];
    if loadflags & LOADED_HIGH == 0 {
        return Err(unsupported(
            "zImage (loads below 1 MiB); only bzImage is supported".into(),
        ));
    }
    let xloadflags = le16(k, 0x236);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            "XLF_KERNEL_64 is clear: this kernel has no 64-bit entry point (a 32-bit kernel?)"
                .into(),
        ));
    }
    let setup_sects = match k[0x1f1] {
        0 => 4,
        n => n as u64,
    };
    let setup = (setup_sects + 1) * 512;
    let got = (k.len() as u64).saturating_sub(setup);
    let want = le32(k, 0x1f4) as u64 * 16;
    if got < want || got == 0 {
        return Err(Error::Truncated {
            label: label.into(),
            got,
            want,
        });
    }
    Ok(KernelKind::BzImage {
        version,
        init_size: (le32(k, 0x260) as u64).max(got),
        initrd_addr_max: le32(k, 0x22c) as u64,
        cmdline_max: le32(k, 0x238) as usize,
    })
}

/// Boot-time inputs.
pub struct BootImages<'a> {
    pub label: &'a str,
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub ram_size: u64,
    pub cpus: usize,
}

#[derive(Clone, Copy, Default)]
#[allow(dead_code)] // read as bytes, through ByteValued
struct StartInfo(hvm_start_info);
// SAFETY: a plain C struct from linux-loader's bindings; any bytes are valid.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[allow(dead_code)] // read as bytes, through ByteValued
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a plain C struct from linux-loader's bindings; any bytes are valid.
unsafe impl ByteValued for MemmapEntry {}
#[derive(Clone, Copy, Default)]
#[allow(dead_code)] // read as bytes, through ByteValued
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a plain C struct from linux-loader's bindings; any bytes are valid.
unsafe impl ByteValued for ModlistEntry {}

fn mem_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Memory(e.to_string())
}

/// Loads everything into `mem` and returns how to enter the kernel.
pub fn load(mem: &GuestMemoryMmap, b: &BootImages) -> Result<BootInfo, Error> {
    let kind = inspect(b.label, b.kernel)?;
    let low_end = low_ram_end(b.ram_size);
    let load_err = |e: linux_loader::loader::Error| Error::Load {
        label: b.label.into(),
        why: e.to_string(),
    };
    let cmdline_max = match kind {
        KernelKind::BzImage { cmdline_max, .. } if cmdline_max > 0 => cmdline_max,
        _ => 2048,
    }
    .min(CMDLINE_MAX - 1);
    if b.cmdline.len() > cmdline_max {
        return Err(Error::CmdlineTooLong {
            len: b.cmdline.len(),
            max: cmdline_max,
        });
    }

    write_gdt_and_page_tables(mem)?;
    let mp = super::mptable::build(b.cpus, EBDA);
    mem.write_slice(&mp, GuestAddress(EBDA)).map_err(mem_err)?;
    let acpi = super::acpi::build(b.cpus);
    mem.write_slice(&acpi, GuestAddress(super::acpi::ACPI_BASE))
        .map_err(mem_err)?;
    let mut cmd = b.cmdline.as_bytes().to_vec();
    cmd.push(0);
    mem.write_slice(&cmd, GuestAddress(CMDLINE))
        .map_err(mem_err)?;

    let mut rd = Cursor::new(b.kernel);
    let (res, initrd_max) = match kind {
        KernelKind::BzImage {
            init_size,
            initrd_addr_max,
            ..
        } => {
            let need = HIGH_RAM + init_size;
            if need > low_end {
                return Err(Error::TooBig {
                    label: b.label.into(),
                    need_mib: need.div_ceil(1 << 20),
                });
            }
            let r = BzImage::load(mem, None, &mut rd, Some(GuestAddress(HIGH_RAM)))
                .map_err(load_err)?;
            // The kernel unpacks itself up to init_size past its start.
            let end = r.kernel_load.0 + init_size;
            let max = if initrd_addr_max == 0 {
                0x37ff_ffff
            } else {
                initrd_addr_max
            };
            ((r, end), max)
        }
        KernelKind::Elf => {
            let r =
                Elf::load(mem, None, &mut rd, Some(GuestAddress(HIGH_RAM))).map_err(load_err)?;
            let end = r.kernel_end;
            ((r, end), u64::MAX)
        }
    };
    let (res, kernel_end) = res;

    let initrd = match b.initrd {
        None => None,
        Some(data) => {
            let size = data.len() as u64;
            let limit = low_end.min(initrd_max.saturating_add(1));
            let addr = limit.checked_sub(size).map(|a| a & !0xfff);
            match addr {
                Some(a) if a >= kernel_end.max(HIGH_RAM) => {
                    mem.write_slice(data, GuestAddress(a)).map_err(mem_err)?;
                    Some((a, size))
                }
                _ => return Err(Error::InitrdTooBig { size, limit }),
            }
        }
    };

    let pvh = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    let entry = if let (KernelKind::Elf, Some(rip)) = (kind, pvh) {
        write_pvh(mem, b, initrd)?;
        Entry::Pvh {
            rip,
            start_info: PVH_START_INFO,
        }
    } else {
        let mut params = boot_params::default();
        match res.setup_header {
            Some(h) => params.hdr = h,
            None => {
                // A bare vmlinux: fill what the kernel checks.
                params.hdr.boot_flag = 0xaa55;
                params.hdr.header = 0x5372_6448;
                params.hdr.kernel_alignment = 0x100_0000;
            }
        }
        params.hdr.type_of_loader = 0xff;
        params.acpi_rsdp_addr = super::acpi::ACPI_BASE;
        params.hdr.cmd_line_ptr = CMDLINE as u32;
        params.hdr.cmdline_size = b.cmdline.len() as u32;
        if let Some((a, s)) = initrd {
            params.hdr.ramdisk_image = a as u32;
            params.hdr.ramdisk_size = s as u32;
        }
        let e820 = e820(b.ram_size);
        for (i, &(addr, size, ty)) in e820.iter().enumerate() {
            params.e820_table[i].addr = addr;
            params.e820_table[i].size = size;
            params.e820_table[i].r#type = ty;
        }
        params.e820_entries = e820.len() as u8;
        mem.write_obj(params, GuestAddress(ZERO_PAGE))
            .map_err(mem_err)?;
        let rip = match kind {
            KernelKind::BzImage { .. } => res.kernel_load.0 + 0x200,
            KernelKind::Elf => {
                // linux-loader returns the load address; the entry point is
                // e_entry, which for vmlinux is physical.
                elf_entry(b.kernel)
            }
        };
        Entry::Linux64 {
            rip,
            zero_page: ZERO_PAGE,
        }
    };
    Ok(BootInfo {
        entry,
        kernel_start: res.kernel_load.0,
        kernel_end,
        initrd,
        cmdline: CMDLINE,
    })
}

fn elf_entry(k: &[u8]) -> u64 {
    u64::from_le_bytes(k[24..32].try_into().expect("inspected ELF header"))
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    b: &BootImages,
    initrd: Option<(u64, u64)>,
) -> Result<(), Error> {
    let e820 = e820(b.ram_size);
    let mut si = StartInfo(hvm_start_info {
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: super::acpi::ACPI_BASE,
        ..Default::default()
    });
    if initrd.is_some() {
        si.0.nr_modules = 1;
        si.0.modlist_paddr = PVH_MODLIST;
    }
    let mut params = BootParams::new(&si, GuestAddress(PVH_START_INFO));
    let memmap: Vec<MemmapEntry> = e820
        .iter()
        .map(|&(addr, size, type_)| {
            MemmapEntry(hvm_memmap_table_entry {
                addr,
                size,
                type_,
                reserved: 0,
            })
        })
        .collect();
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
    if let Some((paddr, size)) = initrd {
        let m = [ModlistEntry(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })];
        params.set_modules(&m, GuestAddress(PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(mem_err)
}

fn write_gdt_and_page_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + 8 * i as u64))
            .map_err(mem_err)?;
    }
    mem.write_obj(PDPT | 3, GuestAddress(PML4))
        .map_err(mem_err)?;
    for g in 0..4u64 {
        mem.write_obj((PD + g * 0x1000) | 3, GuestAddress(PDPT + g * 8))
            .map_err(mem_err)?;
    }
    let mut pd = vec![0u8; 4 * 4096];
    for (i, c) in pd.chunks_mut(8).enumerate() {
        // present | writable | 2 MiB page
        c.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD)).map_err(mem_err)
}

/// The GDT the boot vCPU's segment registers refer to: null, 64-bit code
/// (0x08), flat data (0x10), TSS (0x18), 32-bit code (0x20, PVH). Must match
/// `hypervisor::GDT_ENTRIES` (checked by a test in the VMM).
pub const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
    0x00cf_9b00_0000_ffff,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn bz(version: u16, xlf: u16, payload: usize, syssize: u32) -> Vec<u8> {
        let mut k = vec![0u8; 5 * 512 + payload];
        k[0x1f1] = 4;
        k[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        k[0x211] = 1;
        k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        k[0x236..0x238].copy_from_slice(&xlf.to_le_bytes());
        k[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
        k
    }

    #[test]
    fn inspect_rejects_bad_kernels() {
        assert!(matches!(
            inspect("k", b"#!/bin/sh\necho hi\n"),
            Err(Error::NotAKernel(_))
        ));
        assert!(matches!(
            inspect("k", &[0u8; 8192]),
            Err(Error::NotAKernel(_))
        ));
        let e = inspect("k", &bz(0x020b, 1, 4096, 256)).unwrap_err();
        assert!(e.to_string().contains("2.11"), "{e}");
        let e = inspect("k", &bz(0x020f, 0, 4096, 256)).unwrap_err();
        assert!(e.to_string().contains("XLF_KERNEL_64"), "{e}");
        let e = inspect("k", &bz(0x020f, 1, 4000, 256)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Truncated {
                    got: 4000,
                    want: 4096,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            inspect("k", &bz(0x020f, 1, 4096, 256)),
            Ok(KernelKind::BzImage {
                version: 0x020f,
                ..
            })
        ));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 183; // aarch64
        let e = inspect("k", &elf).unwrap_err();
        assert!(e.to_string().contains("not x86-64"), "{e}");
    }

    #[test]
    fn bzimage_zero_page_and_initrd() {
        let ram = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(ram)).unwrap();
        let mut k = bz(0x020f, 1, 4096, 256);
        k[5 * 512] = 0xf4;
        let initrd = vec![7u8; 10000];
        let info = load(
            &mem,
            &BootImages {
                label: "k",
                kernel: &k,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0 hello",
                ram_size: ram,
                cpus: 2,
            },
        )
        .unwrap();
        assert_eq!(
            info.entry,
            Entry::Linux64 {
                rip: 0x10_0200,
                zero_page: ZERO_PAGE
            }
        );
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE);
        let (ia, is) = info.initrd.unwrap();
        assert_eq!(
            ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64),
            (ia, is)
        );
        assert_eq!(ia % 4096, 0);
        assert!(ia + is <= ram);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(ia + 9999)).unwrap(), 7);
        assert_eq!(p.e820_entries, 3);
        let mut c = [0u8; 20];
        mem.read_slice(&mut c, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&c, b"console=ttyS0 hello\0");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xf4);
    }
}
