//! Picks kernel modules out of Debian's kernel package: finds each wanted
//! module, skips those built into the kernel (`modules.builtin`), adds its
//! dependencies (the `depends=` field of the module's own modinfo, since the
//! package ships no modules.dep) and orders them so dependencies load first.
//! Debian compresses modules with xz; they are decompressed here so that
//! BusyBox `insmod` can load them whatever its build options.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The modules the default guest loads: virtio transport and devices, ext4
/// for a root disk, and leds_gpio for the panic LED that tells ferro the
/// kernel crashed. (virtio_console and the virtio core are built in on
/// Debian's riscv64 kernel; built-in ones are skipped automatically.)
/// Append new entries at the end: a cache fetched for this list also
/// satisfies older ferro binaries whose list is a prefix of it.
pub const WANTED: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "crc32c_generic",
    "ext4",
    "leds_gpio",
];

pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    let f = path.file_name()?.to_str()?;
    let base = f.strip_suffix(".ko.xz").or_else(|| f.strip_suffix(".ko"))?;
    Some(normalize(base))
}

fn index(dir: &Path, out: &mut HashMap<String, PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, out)?;
        } else if let Some(n) = module_name(&p) {
            out.insert(n, p);
        }
    }
    Ok(())
}

/// `depends=` from a module's modinfo strings.
pub fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(pos) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[pos + key.len()..];
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(normalize)
        .collect()
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    if p.extension().is_some_and(|x| x == "xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::Cursor::new(raw), &mut out)
            .map_err(|e| anyhow::anyhow!("cannot decompress {}: {e:?}", p.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Modules to load, dependencies first, decompressed: `(name, bytes)`.
/// `root` is `lib/modules/<version>`.
pub fn collect(root: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut idx = HashMap::new();
    index(&root.join("kernel"), &mut idx)
        .with_context(|| format!("cannot list modules under {}", root.display()))?;
    let builtin: HashSet<String> = std::fs::read_to_string(root.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut done = HashSet::new();
    let mut out = Vec::new();
    fn visit(
        name: &str,
        idx: &HashMap<String, PathBuf>,
        builtin: &HashSet<String>,
        done: &mut HashSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        if !done.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        anyhow::ensure!(depth < 32, "module dependency chain too deep at {name}");
        let Some(p) = idx.get(name) else {
            anyhow::bail!("kernel module {name} is neither built in nor in the package");
        };
        let data = read_module(p)?;
        for d in depends(&data) {
            visit(&d, idx, builtin, done, out, depth + 1)?;
        }
        out.push((name.to_string(), data));
        Ok(())
    }
    for w in wanted {
        visit(&normalize(w), &idx, &builtin, &mut done, &mut out, 0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_order_and_builtins() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("a.ko"),
            b"\x7fELF\0license=GPL\0depends=b,c-d\0name=a\0",
        )
        .unwrap();
        std::fs::write(k.join("b.ko"), b"\0depends=\0").unwrap();
        std::fs::write(k.join("c-d.ko"), b"\0depends=b\0").unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/drivers/e.ko\n").unwrap();
        let got = collect(d.path(), &["a", "e"]).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c_d", "a"]);
        let err = collect(d.path(), &["zz"]).unwrap_err().to_string();
        assert!(err.contains("zz"), "{err}");
    }
}
