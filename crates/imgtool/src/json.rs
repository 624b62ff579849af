//! JSON as qemu-img prints it. QEMU builds a QDict (a 512-bucket hash table)
//! and walks it bucket by bucket, so keys come out in hash order, not in
//! insertion order; scripts and eyes that diff our output against qemu-img's
//! see the same order because we order keys with QEMU's hash.

use std::fmt::Write as _;

/// A JSON value; objects keep the keys they were built with and are
/// reordered only when printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Builds an object from `(key, value)` pairs.
    pub fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }
    pub fn int(v: impl TryInto<i64>) -> Json {
        Json::Int(v.try_into().unwrap_or(i64::MAX))
    }

    /// `qobject_to_json_pretty`, with a trailing newline as qemu-img prints.
    pub fn pretty(&self) -> String {
        let mut s = String::new();
        write_value(&mut s, self, 0);
        s.push('\n');
        s
    }
}

/// QEMU's `tdb_hash` bucket for a QDict key.
pub fn qdict_bucket(key: &str) -> u32 {
    let b = key.as_bytes();
    let mut v: u32 = 0x238F_13AFu32.wrapping_mul(b.len() as u32);
    for (i, &c) in b.iter().enumerate() {
        v = v.wrapping_add((c as u32) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(v).wrapping_add(12345) % 512
}

fn newline(s: &mut String, level: usize) {
    s.push('\n');
    for _ in 0..level {
        s.push_str("    ");
    }
}

fn write_value(s: &mut String, v: &Json, level: usize) {
    match v {
        Json::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Json::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Json::Str(t) => write_str(s, t),
        Json::Arr(items) => {
            s.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                newline(s, level + 1);
                write_value(s, it, level + 1);
            }
            newline(s, level);
            s.push(']');
        }
        Json::Obj(pairs) => {
            // Same bucket: QEMU inserts at the head, so later keys come first.
            let mut order: Vec<&(String, Json)> = pairs.iter().rev().collect();
            order.sort_by_key(|(k, _)| qdict_bucket(k));
            s.push('{');
            for (i, (k, val)) in order.into_iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                newline(s, level + 1);
                write_str(s, k);
                s.push_str(": ");
                write_value(s, val, level + 1);
            }
            newline(s, level);
            s.push('}');
        }
    }
}

/// A JSON string with QEMU's escapes (non-ASCII as `\uXXXX`).
pub fn write_str(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(s, "\\u{:04X}", u);
                }
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_matches_qemu_img_info() {
        let j = Json::obj([
            ("filename", Json::str("a.qcow2")),
            ("format", Json::str("qcow2")),
            ("dirty-flag", Json::Bool(false)),
            ("actual-size", Json::int(4096)),
            ("virtual-size", Json::int(1024)),
            ("cluster-size", Json::int(65536)),
        ]);
        let keys: Vec<String> = j
            .pretty()
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix('"')
                    .map(|r| r.split('"').next().unwrap().to_string())
            })
            .collect();
        // The order `qemu-img info --output=json` prints.
        assert_eq!(
            keys,
            [
                "virtual-size",
                "filename",
                "cluster-size",
                "format",
                "actual-size",
                "dirty-flag"
            ]
        );
    }

    #[test]
    fn pretty_layout() {
        let j = Json::obj([
            ("a", Json::Arr(vec![Json::int(1), Json::str("x\u{e9}")])),
            ("e", Json::Arr(vec![])),
        ]);
        let out = j.pretty();
        assert!(
            out.contains("[\n        1,\n        \"x\\u00E9\"\n    ]"),
            "{out}"
        );
        assert!(out.contains("\"e\": [\n    ]"), "{out}");
    }
}
