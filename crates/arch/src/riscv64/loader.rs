//! Boot image parsing: the RISC-V Linux `Image` header, bare-metal ELF64
//! (PT_LOAD segments and the `tohost`/`fromhost` symbols), and OpenSBI's
//! `fw_dynamic_info` block. Everything here reads untrusted files: every
//! offset and size is checked, and nothing is allocated from a size field.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("{what} is too small ({len} bytes) to be a RISC-V Linux Image")]
    ImageTooSmall { what: &'static str, len: usize },
    #[error("{what} is not a RISC-V Linux Image (no \"RSC\\x05\" magic at offset 56)")]
    ImageMagic { what: &'static str },
    #[error("{what}: {msg}")]
    Elf { what: &'static str, msg: String },
}

/// What the 64-byte RISC-V Image header tells the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Memory the kernel occupies once running (includes bss); at least the file size.
    pub image_size: u64,
    pub version: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses the header of a RISC-V Linux `Image` (Documentation/arch/riscv/boot-image-header.rst).
pub fn parse_image_header(what: &'static str, b: &[u8]) -> Result<ImageHeader, LoadError> {
    if b.len() < 64 {
        return Err(LoadError::ImageTooSmall { what, len: b.len() });
    }
    if &b[56..60] != b"RSC\x05" {
        return Err(LoadError::ImageMagic { what });
    }
    let text_offset = u64_at(b, 8).unwrap_or(0);
    let image_size = u64_at(b, 16).unwrap_or(0).max(b.len() as u64);
    let version = u32_at(b, 32).unwrap_or(0);
    Ok(ImageHeader {
        text_offset,
        image_size,
        version,
    })
}

pub fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

/// One PT_LOAD segment: file bytes `[offset, offset + filesz)` go to physical
/// `paddr`, the rest up to `memsz` is zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub vaddr: u64,
    pub offset: usize,
    pub filesz: usize,
    pub memsz: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

const EM_RISCV: u16 = 243;
const PT_LOAD: u32 = 1;
const SHT_SYMTAB: u32 = 2;
/// Bounds how much work a hostile header can ask for.
const MAX_PHDRS: usize = 256;
const MAX_SHDRS: usize = 4096;

impl Elf {
    /// Parses and validates an ELF64 little-endian RISC-V executable.
    pub fn parse(what: &'static str, b: &[u8]) -> Result<Elf, LoadError> {
        let err = |msg: &str| LoadError::Elf {
            what,
            msg: msg.to_string(),
        };
        if !is_elf(b) {
            return Err(err("not an ELF file"));
        }
        if b.len() < 64 {
            return Err(err("truncated ELF header"));
        }
        if b[4] != 2 || b[5] != 1 {
            return Err(err("not a 64-bit little-endian ELF"));
        }
        let machine = u16_at(b, 18).unwrap_or(0);
        if machine != EM_RISCV {
            return Err(LoadError::Elf {
                what,
                msg: format!("ELF machine is {machine}, not RISC-V (243)"),
            });
        }
        let entry = u64_at(b, 24).unwrap_or(0);
        let phoff = u64_at(b, 32).unwrap_or(0);
        let phentsize = u16_at(b, 54).unwrap_or(0) as usize;
        let phnum = u16_at(b, 56).unwrap_or(0) as usize;
        if phnum == 0 || phnum > MAX_PHDRS || phentsize < 56 {
            return Err(err("no usable program headers"));
        }
        let mut segments = Vec::new();
        for i in 0..phnum {
            let base = usize::try_from(phoff)
                .ok()
                .and_then(|o| o.checked_add(i.checked_mul(phentsize)?))
                .filter(|o| o.checked_add(56).is_some_and(|e| e <= b.len()))
                .ok_or_else(|| err("program header table runs past the end of the file"))?;
            if u32_at(b, base) != Some(PT_LOAD) {
                continue;
            }
            let offset = u64_at(b, base + 8).unwrap_or(0);
            let vaddr = u64_at(b, base + 16).unwrap_or(0);
            let paddr = u64_at(b, base + 24).unwrap_or(0);
            let filesz = u64_at(b, base + 32).unwrap_or(0);
            let memsz = u64_at(b, base + 40).unwrap_or(0);
            if filesz > memsz {
                return Err(err("segment file size exceeds its memory size"));
            }
            let end = offset.checked_add(filesz).filter(|&e| e <= b.len() as u64);
            if end.is_none() {
                return Err(err("segment data runs past the end of the file"));
            }
            if paddr.checked_add(memsz).is_none() {
                return Err(err("segment address range overflows"));
            }
            if memsz == 0 {
                continue;
            }
            segments.push(Segment {
                paddr,
                vaddr,
                offset: offset as usize,
                filesz: filesz as usize,
                memsz,
            });
        }
        if segments.is_empty() {
            return Err(err("no loadable segments"));
        }
        Ok(Elf { entry, segments })
    }

    /// Translates a virtual address (symbol value, entry) to physical through
    /// the segment that contains it; identity when none does.
    pub fn to_phys(&self, vaddr: u64) -> u64 {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
            .map(|s| s.paddr + (vaddr - s.vaddr))
            .unwrap_or(vaddr)
    }
}

/// Looks up a symbol's value in the ELF's `.symtab`. `None` when there is no
/// symbol table or no such symbol; malformed tables are treated as absent.
pub fn elf_symbol(b: &[u8], name: &str) -> Option<u64> {
    let shoff = usize::try_from(u64_at(b, 40)?).ok()?;
    let shentsize = u16_at(b, 58)? as usize;
    let shnum = u16_at(b, 60)? as usize;
    if shentsize < 64 || shnum > MAX_SHDRS {
        return None;
    }
    let sh = |i: usize| -> Option<usize> {
        let o = shoff.checked_add(i.checked_mul(shentsize)?)?;
        (o.checked_add(64)? <= b.len()).then_some(o)
    };
    for i in 0..shnum {
        let s = sh(i)?;
        if u32_at(b, s + 4)? != SHT_SYMTAB {
            continue;
        }
        let off = usize::try_from(u64_at(b, s + 24)?).ok()?;
        let size = usize::try_from(u64_at(b, s + 32)?).ok()?;
        let link = u32_at(b, s + 40)? as usize;
        let entsize = (u64_at(b, s + 56)? as usize).max(24);
        let strtab = sh(link)?;
        let str_off = usize::try_from(u64_at(b, strtab + 24)?).ok()?;
        let str_size = usize::try_from(u64_at(b, strtab + 32)?).ok()?;
        let strs = b.get(str_off..str_off.checked_add(str_size)?)?;
        let syms = b.get(off..off.checked_add(size)?)?;
        for sym in syms.chunks_exact(entsize) {
            let name_off = u32_at(sym, 0)? as usize;
            let Some(rest) = strs.get(name_off..) else {
                continue;
            };
            let n = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            if &rest[..n] == name.as_bytes() {
                return u64_at(sym, 8);
            }
        }
    }
    None
}

/// OpenSBI `struct fw_dynamic_info` (version 2), as the previous boot stage
/// passes it in a2.
pub fn fw_dynamic_info(next_addr: u64, next_mode_s: bool, boot_hart: u64) -> [u8; 48] {
    const MAGIC: u64 = 0x4942_534f; // "OSBI"
    let next_mode: u64 = if next_mode_s { 1 } else { 3 };
    let fields = [MAGIC, 2, next_addr, next_mode, 0, boot_hart];
    let mut out = [0u8; 48];
    for (i, f) in fields.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn image(len: usize, image_size: u64) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[32..36].copy_from_slice(&2u32.to_le_bytes());
        b[48..56].copy_from_slice(b"RISCV\0\0\0");
        b[56..60].copy_from_slice(b"RSC\x05");
        b
    }

    #[test]
    fn image_header() {
        let h = parse_image_header("kernel", &image(4096, 0x10000)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0x20_0000,
                image_size: 0x10000,
                version: 2
            }
        );
        // image_size never below the file size.
        assert_eq!(
            parse_image_header("kernel", &image(4096, 0))
                .unwrap()
                .image_size,
            4096
        );
        assert_eq!(
            parse_image_header("kernel", &[0; 10]),
            Err(LoadError::ImageTooSmall {
                what: "kernel",
                len: 10
            })
        );
        let e = parse_image_header("kernel", &[0; 100]).unwrap_err();
        assert_eq!(e, LoadError::ImageMagic { what: "kernel" });
        assert!(e.to_string().contains("not a RISC-V Linux Image"));
    }

    /// A minimal ELF: one PT_LOAD at `paddr` and a symtab with `tohost`.
    pub fn elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&EM_RISCV.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let data_off = 64 + 56;
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&(data_off as u64).to_le_bytes());
        ph[16..24].copy_from_slice(&paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        b.extend_from_slice(&ph);
        b.extend_from_slice(code);
        // strtab, symtab, then 3 section headers (null, symtab, strtab).
        let strtab_off = b.len();
        let strs = b"\0fromhost\0tohost\0";
        b.extend_from_slice(strs);
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
        let symtab_off = b.len();
        let sym = |name: u32, val: u64| {
            let mut s = vec![0u8; 24];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[8..16].copy_from_slice(&val.to_le_bytes());
            s
        };
        let syms = [sym(0, 0), sym(1, paddr + 0x1008), sym(10, paddr + 0x1000)].concat();
        b.extend_from_slice(&syms);
        let shoff = b.len();
        let mut sh = vec![0u8; 64 * 3];
        let s1 = &mut sh[64..128];
        s1[4..8].copy_from_slice(&SHT_SYMTAB.to_le_bytes());
        s1[24..32].copy_from_slice(&(symtab_off as u64).to_le_bytes());
        s1[32..40].copy_from_slice(&(syms.len() as u64).to_le_bytes());
        s1[40..44].copy_from_slice(&2u32.to_le_bytes());
        s1[56..64].copy_from_slice(&24u64.to_le_bytes());
        let s2 = &mut sh[128..192];
        s2[4..8].copy_from_slice(&3u32.to_le_bytes());
        s2[24..32].copy_from_slice(&(strtab_off as u64).to_le_bytes());
        s2[32..40].copy_from_slice(&(strs.len() as u64).to_le_bytes());
        b.extend_from_slice(&sh);
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&3u16.to_le_bytes());
        b
    }

    #[test]
    fn elf_segments_and_symbols() {
        let b = elf(0x8000_0000, &[0x13, 0, 0, 0], 0x2000);
        let e = Elf::parse("kernel", &b).unwrap();
        assert_eq!(e.entry, 0x8000_0000);
        assert_eq!(
            e.segments,
            vec![Segment {
                paddr: 0x8000_0000,
                vaddr: 0x8000_0000,
                offset: 120,
                filesz: 4,
                memsz: 0x2000
            }]
        );
        assert_eq!(elf_symbol(&b, "tohost"), Some(0x8000_1000));
        assert_eq!(elf_symbol(&b, "fromhost"), Some(0x8000_1008));
        assert_eq!(elf_symbol(&b, "nothere"), None);
    }

    #[test]
    fn elf_rejects_malformed() {
        let good = elf(0x8000_0000, &[0; 8], 8);
        let msg = |b: &[u8]| Elf::parse("kernel", b).unwrap_err().to_string();
        assert!(msg(b"hello").contains("not an ELF"));
        assert!(msg(&good[..40]).contains("truncated"));
        let mut b = good.clone();
        b[18] = 62; // x86-64
        assert!(msg(&b).contains("not RISC-V"));
        let mut b = good.clone();
        b[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // filesz
        assert!(msg(&b).contains("exceeds") || msg(&b).contains("past the end"));
        let mut b = good.clone();
        b[64 + 40..64 + 48].copy_from_slice(&u64::MAX.to_le_bytes()); // memsz
        b[64 + 32..64 + 40].copy_from_slice(&8u64.to_le_bytes());
        assert!(msg(&b).contains("overflows"));
        let mut b = good.clone();
        b[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes()); // phoff
        assert!(msg(&b).contains("past the end"));
        // Corrupt section headers: the symbol is just absent.
        let mut b = good.clone();
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_symbol(&b, "tohost"), None);
        // Every truncation of a valid file is an error or a valid parse, never a panic.
        for n in 0..good.len() {
            let _ = Elf::parse("kernel", &good[..n]);
            let _ = elf_symbol(&good[..n], "tohost");
        }
    }

    #[test]
    fn dynamic_info_layout() {
        let d = fw_dynamic_info(0x8020_0000, true, 0);
        assert_eq!(&d[0..8], &0x4942_534fu64.to_le_bytes());
        assert_eq!(&d[8..16], &2u64.to_le_bytes());
        assert_eq!(&d[16..24], &0x8020_0000u64.to_le_bytes());
        assert_eq!(&d[24..32], &1u64.to_le_bytes());
    }
}
