//! `-o key=value,...` creation options, parsed like QEMU's QemuOpts: `,,`
//! escapes a comma, a bare `key` means `key=on`, the last value wins, and
//! type errors name the parameter. The tables list each format's options in
//! the order qemu-img prints them on its "Formatting ..." line.

use crate::size::{opt_size_error, strtosz};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptType {
    Str,
    Bool,
    Size,
    Number,
}

#[derive(Clone, Copy, Debug)]
pub struct OptDesc {
    pub name: &'static str,
    pub ty: OptType,
    pub help: &'static str,
    /// Printed on the "Formatting" line even when not given.
    pub def: Option<&'static str>,
}

const fn d(
    name: &'static str,
    ty: OptType,
    help: &'static str,
    def: Option<&'static str>,
) -> OptDesc {
    OptDesc {
        name,
        ty,
        help,
        def,
    }
}

use OptType::*;

/// qcow2's options, in qemu-img's "Formatting" order.
pub const QCOW2: &[OptDesc] = &[
    d(
        "encryption",
        Bool,
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        None,
    ),
    d(
        "encrypt.format",
        Str,
        "Encrypt the image, format choices: 'aes', 'luks'",
        None,
    ),
    d(
        "encrypt.key-secret",
        Str,
        "ID of secret providing qcow AES key or LUKS passphrase",
        None,
    ),
    d(
        "encrypt.cipher-alg",
        Str,
        "Name of encryption cipher algorithm",
        None,
    ),
    d(
        "encrypt.cipher-mode",
        Str,
        "Name of encryption cipher mode",
        None,
    ),
    d(
        "encrypt.ivgen-alg",
        Str,
        "Name of IV generator algorithm",
        None,
    ),
    d(
        "encrypt.ivgen-hash-alg",
        Str,
        "Name of IV generator hash algorithm",
        None,
    ),
    d(
        "encrypt.hash-alg",
        Str,
        "Name of encryption hash algorithm",
        None,
    ),
    d(
        "encrypt.iter-time",
        Number,
        "Time to spend in PBKDF in milliseconds",
        None,
    ),
    d("cluster_size", Size, "qcow2 cluster size", Some("65536")),
    d("extended_l2", Bool, "Extended L2 tables", Some("off")),
    d(
        "preallocation",
        Str,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
        None,
    ),
    d(
        "compression_type",
        Str,
        "Compression method used for image cluster compression",
        Some("zlib"),
    ),
    d("size", Size, "Virtual disk size", None),
    d("backing_file", Str, "File name of a base image", None),
    d("backing_fmt", Str, "Image format of the base image", None),
    d(
        "compat",
        Str,
        "Compatibility level (v2 [0.10] or v3 [1.1])",
        None,
    ),
    d("data_file", Str, "File name of an external data file", None),
    d(
        "data_file_raw",
        Bool,
        "The external data file must stay valid as a raw image",
        None,
    ),
    d(
        "lazy_refcounts",
        Bool,
        "Postpone refcount updates",
        Some("off"),
    ),
    d(
        "refcount_bits",
        Number,
        "Width of a reference count entry in bits",
        Some("16"),
    ),
    d(
        "nocow",
        Bool,
        "Turn off copy-on-write (valid only on btrfs)",
        None,
    ),
    d(
        "extent_size_hint",
        Size,
        "Extent size hint for the image file, 0 to disable",
        None,
    ),
];

/// raw's options, in qemu-img's "Formatting" order.
pub const RAW: &[OptDesc] = &[
    d("size", Size, "Virtual disk size", None),
    d(
        "nocow",
        Bool,
        "Turn off copy-on-write (valid only on btrfs)",
        None,
    ),
    d(
        "preallocation",
        Str,
        "Preallocation mode (allowed values: off, falloc, full)",
        None,
    ),
    d(
        "extent_size_hint",
        Size,
        "Extent size hint for the image file, 0 to disable",
        None,
    ),
];

/// Parsed `-o` values (raw strings; typed getters below).
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub vals: Vec<(String, String)>,
}

/// qemu-img's `is_valid_option_list`: no empty list, no empty item.
pub fn is_valid_option_list(s: &str) -> bool {
    if s.is_empty() || s.starts_with(',') {
        return false;
    }
    // A single trailing comma (not an escaped ",,") leaves an empty item.
    let trailing = s.len() - s.trim_end_matches(',').len();
    trailing.is_multiple_of(2)
}

/// Whether the list asks for help (`help` or `?` as an item).
pub fn has_help(s: &str) -> bool {
    split_items(s).iter().any(|i| i == "help" || i == "?")
}

fn split_items(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
}

impl Opts {
    /// Parses one `-o` list against `descs`, adding to what is already set.
    pub fn parse(&mut self, list: &str, descs: &[OptDesc]) -> Result<(), String> {
        for item in split_items(list) {
            if item.is_empty() {
                continue;
            }
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (item.clone(), "on".to_string()),
            };
            let desc = descs
                .iter()
                .find(|d| d.name == k)
                .ok_or_else(|| format!("Invalid parameter '{k}'"))?;
            match desc.ty {
                Str => {}
                Bool => {
                    if v != "on" && v != "off" {
                        return Err(format!("Parameter '{k}' expects 'on' or 'off'"));
                    }
                }
                Size => {
                    strtosz(&v).map_err(|_| opt_size_error(&k))?;
                }
                Number => {
                    parse_u64(&v).ok_or_else(|| format!("Parameter '{k}' expects a number"))?;
                }
            }
            self.set(&k, &v);
        }
        Ok(())
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vals.retain(|(kk, _)| kk != k);
        self.vals.push((k.to_string(), v.to_string()));
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.vals
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn size(&self, k: &str) -> Option<u64> {
        self.get(k).and_then(|v| strtosz(v).ok())
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        self.get(k).map(|v| v == "on")
    }
    pub fn number(&self, k: &str) -> Option<u64> {
        self.get(k).and_then(parse_u64)
    }

    /// The text after `fmt=X` on qemu-img's "Formatting" line.
    pub fn print(&self, descs: &[OptDesc]) -> String {
        let mut parts = Vec::new();
        for d in descs {
            let v = match (self.get(d.name), d.def) {
                (Some(v), _) => match d.ty {
                    Size => strtosz(v)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|_| v.to_string()),
                    Number => parse_u64(v)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| v.to_string()),
                    Str => v.replace(',', ",,"),
                    Bool => v.to_string(),
                },
                (None, Some(def)) => def.to_string(),
                (None, None) => continue,
            };
            parts.push(format!("{}={}", d.name, v));
        }
        parts.join(" ")
    }
}

/// `qemu_strtou64(s, base 0)`: decimal, `0x` hex or leading-zero octal.
pub fn parse_u64(s: &str) -> Option<u64> {
    let t = s.trim_start();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

/// `-o help`: the options, sorted, as qemu-img lists them.
pub fn help(descs: &[OptDesc]) -> String {
    let mut v: Vec<&OptDesc> = descs.iter().collect();
    v.sort_by_key(|d| d.name);
    let mut s = String::from("Supported options:\n");
    for d in v {
        let ty = match d.ty {
            Str => "str",
            Bool => "bool (on/off)",
            Size => "size",
            Number => "num",
        };
        let mut line = format!("  {}=<{}>", d.name, ty);
        while line.len() < 24 {
            line.push(' ');
        }
        line.push_str(" - ");
        line.push_str(d.help);
        s.push_str(&line);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_like_qemu() {
        let mut o = Opts::default();
        o.parse("cluster_size=64k,lazy_refcounts,compat=1.1,,x", QCOW2)
            .unwrap();
        o.set("size", "1048576");
        assert_eq!(o.size("cluster_size"), Some(65536));
        assert_eq!(o.bool("lazy_refcounts"), Some(true));
        assert_eq!(o.get("compat"), Some("1.1,x"));
        assert_eq!(
            o.print(QCOW2),
            "cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 compat=1.1,,x lazy_refcounts=on refcount_bits=16"
        );
    }

    #[test]
    fn errors_like_qemu() {
        let mut o = Opts::default();
        assert_eq!(
            o.parse("bogus=1", QCOW2).unwrap_err(),
            "Invalid parameter 'bogus'"
        );
        assert_eq!(
            o.parse("lazy_refcounts=maybe", QCOW2).unwrap_err(),
            "Parameter 'lazy_refcounts' expects 'on' or 'off'"
        );
        assert!(o
            .parse("cluster_size=abc", QCOW2)
            .unwrap_err()
            .starts_with("Parameter 'cluster_size' expects a non-negative number below 2^64\n"));
        assert_eq!(
            o.parse("refcount_bits=x", QCOW2).unwrap_err(),
            "Parameter 'refcount_bits' expects a number"
        );
        assert!(!is_valid_option_list(""));
        assert!(!is_valid_option_list("a=b,"));
        assert!(is_valid_option_list("a=b,,"));
        assert!(has_help("cluster_size=4k,help"));
    }
}
