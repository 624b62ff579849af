//! `ferro img create`: option checks in qemu-img's order and wording, the
//! "Formatting '…', fmt=… …" line, then `block::create`.

use std::path::{Path, PathBuf};

use block::{Compat, CompressionType, CreateOptions, Format, Preallocation};

use crate::getopt::{long, parse, HasArg};
use crate::opts::{self, OptDesc, Opts};
use crate::{block_text, parse_format, CmdResult, Ctx, Fail};

pub(crate) fn create(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(
        args,
        "F:b:f:ho:qu",
        &[
            long("help", HasArg::No, "h"),
            long("object", HasArg::Required, "object"),
        ],
    )
    .map_err(Fail::Getopt)?;
    let mut fmt = "raw".to_string();
    let mut base: Option<String> = None;
    let mut base_fmt: Option<String> = None;
    let mut olist: Option<String> = None;
    let mut unsafe_ = false;
    for (k, v) in p.opts {
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => return help(ctx),
            "F" => base_fmt = Some(v),
            "b" => base = Some(v),
            "f" => fmt = v,
            "o" => {
                if !opts::is_valid_option_list(&v) {
                    return Err(Fail::msg(format!("Invalid option list: {v}")));
                }
                olist = Some(match olist {
                    Some(o) => format!("{o},{v}"),
                    None => v,
                });
            }
            "q" => ctx.quiet = true,
            "u" => unsafe_ = true,
            "object" => return Err(Fail::msg("--object is not supported")),
            _ => {}
        }
    }
    let format = parse_format(&fmt);
    let descs: &[OptDesc] = match format {
        Some(Format::Qcow2) => opts::QCOW2,
        _ => opts::RAW,
    };
    if let Some(o) = &olist {
        if opts::has_help(o) {
            if format.is_none() {
                return Err(Fail::msg(format!("Unknown file format '{fmt}'")));
            }
            ctx.print(&opts::help(descs));
            return Ok(0);
        }
    }
    let mut ops = p.operands.into_iter();
    let Some(filename) = ops.next() else {
        return Err(Fail::Usage("Expecting image file name".into()));
    };
    let size_arg = ops.next();
    if let Some(extra) = ops.next() {
        return Err(Fail::Usage(format!("Unexpected argument: {extra}")));
    }
    let mut size: Option<u64> = match &size_arg {
        Some(s) => Some(crate::size::cvtnum("image size", s).map_err(Fail::msg)? as u64),
        None => None,
    };
    // From here on qemu-img's errors name the file.
    let fail = |m: String| Fail::msg(format!("{filename}: {m}"));
    let Some(format) = format else {
        return Err(fail(format!("Unknown file format '{fmt}'")));
    };
    let mut o = Opts::default();
    if let Some(list) = &olist {
        o.parse(list, descs).map_err(fail)?;
    }
    if o.get("size").is_some() {
        if size.is_some() {
            return Err(fail("The image size must be specified only once".into()));
        }
        size = o.size("size");
    }
    if let Some(b) = &base {
        o.set("backing_file", b);
    }
    if let Some(f) = &base_fmt {
        o.set("backing_fmt", f);
    }
    let backing = o.get("backing_file").map(str::to_string);
    let backing_fmt = o.get("backing_fmt").map(str::to_string);
    if let (Some(b), Format::Raw) = (&backing, format) {
        let _ = b;
        return Err(fail(
            "Backing file not supported for file format 'raw'".into(),
        ));
    }
    let mut backing_format = None;
    if let Some(bf) = &backing_fmt {
        backing_format = Some(
            parse_format(bf).ok_or_else(|| fail(format!("Unknown backing file format '{bf}'")))?,
        );
    }
    if let Some(b) = &backing {
        if !unsafe_ {
            let full = resolve_backing(&filename, b);
            let full_s = full.to_string_lossy().to_string();
            let img = block::Image::open(
                &full,
                &block::OpenOptions {
                    format: backing_format,
                    read_only: true,
                    no_backing: true,
                    ..Default::default()
                },
            )
            .map_err(|e| {
                fail(format!(
                    "Could not open '{full_s}': {}\nCould not open backing image.",
                    block_text(&e)
                ))
            })?;
            if backing_fmt.is_none() {
                return Err(fail(format!(
                    "Backing file specified without backing format\nDetected format of {}.",
                    img.format()
                )));
            }
            if size.is_none() {
                size = Some(block::BlockBackend::size(&img));
            }
        } else if backing_fmt.is_none() {
            return Err(fail("Backing file specified without backing format".into()));
        }
    }
    let Some(size) = size else {
        return Err(fail("Image creation needs a size parameter".into()));
    };
    o.set("size", &size.to_string());
    ctx.print(&format!(
        "Formatting '{filename}', fmt={} {}\n",
        format,
        o.print(descs)
    ));
    let _ = ctx.out.flush();

    let copts = build_options(format, size, &o, backing, backing_format).map_err(fail)?;
    block::create(Path::new(&filename), &copts).map_err(|e| fail(create_error(&filename, &e)))?;
    Ok(0)
}

fn help(ctx: &mut Ctx) -> CmdResult {
    ctx.print("usage: ferro img create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n");
    Ok(0)
}

/// A backing path as qemu resolves it: relative to the overlay's folder.
pub(crate) fn resolve_backing(image: &str, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        return b.to_path_buf();
    }
    match Path::new(image).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(b),
        _ => b.to_path_buf(),
    }
}

fn create_error(filename: &str, e: &block::Error) -> String {
    match e {
        block::Error::Io { source, .. } => {
            format!("Could not create '{filename}': {}", crate::io_text(source))
        }
        other => block_text(other),
    }
}

/// Turns validated `-o` values into `block::CreateOptions`, with the checks
/// and messages qemu's qcow2/raw drivers apply after "Formatting".
pub(crate) fn build_options(
    format: Format,
    size: u64,
    o: &Opts,
    backing: Option<String>,
    backing_format: Option<Format>,
) -> Result<CreateOptions, String> {
    let prealloc = match o.get("preallocation") {
        None | Some("off") => Preallocation::Off,
        Some("metadata") if format == Format::Qcow2 => Preallocation::Metadata,
        Some("falloc") => Preallocation::Falloc,
        Some("full") => Preallocation::Full,
        Some(v) => {
            return Err(format!(
                "Parameter 'preallocation' does not accept value '{v}'"
            ))
        }
    };
    if o.bool("nocow") == Some(true) || o.get("extent_size_hint").is_some() {
        // Accepted and ignored by qemu on ext4/xfs as well.
    }
    let mut c = CreateOptions {
        format: Some(format),
        size: Some(size),
        preallocation: prealloc,
        ..Default::default()
    };
    if format == Format::Raw {
        return Ok(c);
    }
    if o.get("encryption").is_some_and(|v| v == "on")
        || o.vals.iter().any(|(k, _)| k.starts_with("encrypt."))
    {
        return Err("Encrypted images are not supported by ferro".into());
    }
    if o.get("data_file").is_some() {
        if o.bool("data_file_raw") == Some(true) && backing.is_some() {
            return Err("Backing file and data-file-raw cannot be used at the same time".into());
        }
        return Err("External data files are not supported by ferro".into());
    }
    let compat = match o.get("compat") {
        None | Some("1.1") | Some("v3") => Compat::V3,
        Some("0.10") | Some("v2") => Compat::V2,
        Some(v) => return Err(format!("Parameter 'version' does not accept value '{v}'")),
    };
    let ct = match o.get("compression_type") {
        None | Some("zlib") => CompressionType::Zlib,
        Some("zstd") => CompressionType::Zstd,
        Some(v) => {
            return Err(format!(
                "Parameter 'compression-type' does not accept value '{v}'"
            ))
        }
    };
    let cs = o.size("cluster_size").unwrap_or(65536);
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err("Cluster size must be a power of two between 512 and 2048k".into());
    }
    let rb = o.number("refcount_bits").unwrap_or(16);
    if !rb.is_power_of_two() || rb > 64 {
        return Err("Refcount width must be a power of two and may not exceed 64 bits".into());
    }
    let v3 = "(use version=v3 or greater)";
    if compat == Compat::V2 && rb != 16 {
        return Err(format!(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above {v3}"
        ));
    }
    let lazy = o.bool("lazy_refcounts").unwrap_or(false);
    if compat == Compat::V2 && lazy {
        return Err(format!(
            "Lazy refcounts only supported with compatibility level 1.1 and above {v3}"
        ));
    }
    if compat == Compat::V2 && ct != CompressionType::Zlib {
        return Err(format!(
            "Non-zlib compression type is only supported with compatibility level 1.1 and above {v3}"
        ));
    }
    let ext = o.bool("extended_l2").unwrap_or(false);
    if ext && compat == Compat::V2 {
        return Err(format!(
            "Extended L2 entries are only supported with compatibility level 1.1 and above {v3}"
        ));
    }
    if ext && cs < 16384 {
        return Err(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        );
    }
    c.cluster_size = Some(cs);
    c.compat = Some(compat);
    c.refcount_bits = Some(rb as u32);
    c.compression_type = Some(ct);
    c.extended_l2 = ext;
    c.lazy_refcounts = lazy;
    c.backing_file = backing;
    c.backing_format = backing_format;
    Ok(c)
}
