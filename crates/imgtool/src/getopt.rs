//! A small `getopt_long` work-alike: qemu-img parses each subcommand with
//! GNU getopt (options may follow operands, short options cluster, long
//! options take `=value` or the next word, unique prefixes of long names are
//! accepted, `--` ends options). clap cannot reproduce that syntax exactly.

/// Whether an option takes an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
}

/// One long option: `--name`, reported under `key` (a short letter when the
/// long option is an alias of one, e.g. `--help` → `h`).
#[derive(Clone, Copy, Debug)]
pub struct Long {
    pub name: &'static str,
    pub has_arg: HasArg,
    pub key: &'static str,
}

pub const fn long(name: &'static str, has_arg: HasArg, key: &'static str) -> Long {
    Long { name, has_arg, key }
}

/// The parse: options in command-line order, then the operands.
#[derive(Debug, Default)]
pub struct Parsed {
    pub opts: Vec<(String, Option<String>)>,
    pub operands: Vec<String>,
}

/// Parses `args` (without the subcommand name). `short` is a getopt
/// optstring (`"hf:o:"`). Errors are qemu-img's usage messages.
pub fn parse(args: &[String], short: &str, longs: &[Long]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let l = find_long(longs, name, a)?;
            match l.has_arg {
                HasArg::No => {
                    if inline.is_some() {
                        return Err(format!("option '--{}' doesn't allow an argument", l.name));
                    }
                    p.opts.push((l.key.to_string(), None));
                }
                HasArg::Required => {
                    let v = match inline {
                        Some(v) => v,
                        None => {
                            let v = args.get(i).ok_or_else(|| {
                                format!("option '--{}' requires an argument", l.name)
                            })?;
                            i += 1;
                            v.clone()
                        }
                    };
                    p.opts.push((l.key.to_string(), Some(v)));
                }
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let pos = short
                    .char_indices()
                    .find(|&(_, sc)| sc == c && sc != ':')
                    .map(|(k, _)| k);
                let Some(pos) = pos else {
                    return Err(format!("invalid option -- '{c}'"));
                };
                let takes = short[pos + c.len_utf8()..].starts_with(':');
                if !takes {
                    p.opts.push((c.to_string(), None));
                    continue;
                }
                let rest: String = chars[j..].iter().collect();
                let v = if !rest.is_empty() {
                    rest
                } else {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("option requires an argument -- '{c}'"))?;
                    i += 1;
                    v.clone()
                };
                p.opts.push((c.to_string(), Some(v)));
                break;
            }
            continue;
        }
        p.operands.push(a.clone());
    }
    Ok(p)
}

/// Exact name, else a unique prefix; errors are glibc's wording (`arg` is
/// the word as typed, which glibc quotes in both messages).
fn find_long<'a>(longs: &'a [Long], name: &str, arg: &str) -> Result<&'a Long, String> {
    if let Some(l) = longs.iter().find(|l| l.name == name) {
        return Ok(l);
    }
    let hits: Vec<&Long> = longs
        .iter()
        .filter(|l| !name.is_empty() && l.name.starts_with(name))
        .collect();
    match hits.first() {
        None => Err(format!("unrecognized option '{arg}'")),
        Some(first) if hits.iter().all(|l| l.key == first.key) => Ok(first),
        Some(_) => {
            let names: Vec<String> = hits.iter().map(|l| format!("'--{}'", l.name)).collect();
            Err(format!(
                "option '{arg}' is ambiguous; possibilities: {}",
                names.join(" ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const L: &[Long] = &[
        long("help", HasArg::No, "h"),
        long("output", HasArg::Required, "output"),
        long("object", HasArg::Required, "object"),
    ];

    #[test]
    fn permutes_clusters_and_longs() {
        let p = parse(
            &v(&[
                "a.img",
                "-qf",
                "qcow2",
                "--output=json",
                "-obar",
                "b",
                "--",
                "-x",
            ]),
            "hqf:o:",
            L,
        )
        .unwrap();
        assert_eq!(
            p.opts,
            vec![
                ("q".into(), None),
                ("f".into(), Some("qcow2".into())),
                ("output".into(), Some("json".into())),
                ("o".into(), Some("bar".into())),
            ]
        );
        assert_eq!(p.operands, v(&["a.img", "b", "-x"]));
    }

    #[test]
    fn errors_match_qemu_img() {
        assert_eq!(
            parse(&v(&["-5"]), "f:", L).unwrap_err(),
            "invalid option -- '5'"
        );
        assert_eq!(
            parse(&v(&["-f"]), "f:", L).unwrap_err(),
            "option requires an argument -- 'f'"
        );
        assert_eq!(
            parse(&v(&["--out"]), "f:", L).unwrap_err(),
            "option '--output' requires an argument"
        );
        // ambiguous prefix
        assert_eq!(
            parse(&v(&["--o=x"]), "f:", L).unwrap_err(),
            "option '--o=x' is ambiguous; possibilities: '--output' '--object'"
        );
        assert_eq!(
            parse(&v(&["--help=3"]), "f:", L).unwrap_err(),
            "option '--help' doesn't allow an argument"
        );
        assert_eq!(
            parse(&v(&["--frob"]), "f:", L).unwrap_err(),
            "unrecognized option '--frob'"
        );
        assert!(parse(&v(&["--help"]), "", L).is_ok());
    }
}
