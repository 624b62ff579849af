//! Commands that copy or change images: `convert`, `compare`, `resize`,
//! `commit`, `rebase`.

use std::path::Path;

use block::{
    BlockBackend, CommitOptions, ConvertOptions, Format, Image, RebaseOptions, ResizeOptions,
};

use crate::getopt::{long, parse, HasArg, Long};
use crate::opts::{self, Opts};
use crate::{
    block_text, open_image, parse_cache, parse_format, progress_bar, progress_set, CmdResult, Ctx,
    Fail, Open,
};

fn common() -> Vec<Long> {
    vec![
        long("help", HasArg::No, "h"),
        long("object", HasArg::Required, "object"),
        long("image-opts", HasArg::No, "image-opts"),
        long("force-share", HasArg::No, "U"),
    ]
}

fn reject_common(k: &str) -> Result<(), Fail> {
    match k {
        "object" | "image-opts" | "target-image-opts" => {
            Err(Fail::msg(format!("--{k} is not supported")))
        }
        _ => Ok(()),
    }
}

const IO_BUF: u64 = 2 << 20;

pub(crate) fn convert(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let mut longs = common();
    longs.extend([
        long("target-image-opts", HasArg::No, "target-image-opts"),
        long("salvage", HasArg::No, "salvage"),
        long("target-is-zero", HasArg::No, "target-is-zero"),
        long("bitmaps", HasArg::No, "bitmaps"),
        long("skip-broken-bitmaps", HasArg::No, "skip-broken-bitmaps"),
    ]);
    let p = parse(args, "hf:O:B:CcF:o:l:S:pt:T:qnm:Wr:U", &longs).map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut out_fmt = "raw".to_string();
    let mut base: Option<String> = None;
    let mut base_fmt: Option<String> = None;
    let mut compress = false;
    let mut olist: Option<String> = None;
    let mut progress = false;
    let mut skip_create = false;
    let mut target_is_zero = false;
    for (k, v) in p.opts {
        reject_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img convert [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] filename output_filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "O" => out_fmt = v,
            "B" => base = Some(v),
            "F" => base_fmt = Some(v),
            "c" => compress = true,
            "o" => {
                if !opts::is_valid_option_list(&v) {
                    return Err(Fail::msg(format!("Invalid option list: {v}")));
                }
                olist = Some(match olist {
                    Some(o) => format!("{o},{v}"),
                    None => v,
                });
            }
            "l" => {
                return Err(Fail::msg(
                    "Converting from internal snapshots (-l) is not supported",
                ))
            }
            "S" => {
                crate::size::cvtnum("buffer size for sparse output", &v).map_err(Fail::msg)?;
            }
            "p" => progress = true,
            "t" => {
                parse_cache(&v).ok_or_else(|| Fail::msg(format!("Invalid cache option: {v}")))?;
            }
            "T" => {
                parse_cache(&v)
                    .ok_or_else(|| Fail::msg(format!("Invalid source cache option: {v}")))?;
            }
            "q" => ctx.quiet = true,
            "n" => skip_create = true,
            "m" => {
                let n = opts::parse_u64(&v).unwrap_or(0);
                if !(1..=16).contains(&n) {
                    return Err(Fail::msg("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"));
                }
            }
            "r" => {
                crate::size::cvtnum("rate limit", &v).map_err(Fail::msg)?;
            }
            "target-is-zero" => target_is_zero = true,
            "salvage" | "bitmaps" | "skip-broken-bitmaps" | "W" | "C" | "U" => {}
            _ => {}
        }
    }
    let progress = progress && !ctx.quiet;
    if p.operands.len() < 2 {
        return Err(Fail::Usage("Must specify image file name".into()));
    }
    let (srcs, out) = p.operands.split_at(p.operands.len() - 1);
    let out_filename = &out[0];
    let Some(out_format) = parse_format(&out_fmt) else {
        return Err(Fail::msg(format!("Unknown file format '{out_fmt}'")));
    };
    let descs = if out_format == Format::Qcow2 {
        opts::QCOW2
    } else {
        opts::RAW
    };
    if let Some(o) = &olist {
        if opts::has_help(o) {
            ctx.print(&opts::help(descs));
            return Ok(0);
        }
    }
    if compress && out_format != Format::Qcow2 {
        return Err(Fail::msg("Compression not supported for this file format"));
    }
    if target_is_zero && !skip_create {
        return Err(Fail::msg("--target-is-zero requires use of -n flag"));
    }
    if base.is_some() && skip_create {
        return Err(Fail::msg("-B makes no sense when -n is used"));
    }
    let mut sources = Vec::new();
    for s in srcs {
        sources.push(open_image(
            ctx,
            s,
            fmt.as_deref(),
            Open {
                read_only: true,
                ..Default::default()
            },
        )?);
    }
    let total: u64 = sources.iter().map(|s| s.size()).sum();

    let mut dst = if skip_create {
        let d = open_image(ctx, out_filename, Some(&out_fmt), Open::default())?;
        if d.size() < total {
            return Err(Fail::msg("output file is smaller than input file"));
        }
        d
    } else {
        let mut o = Opts::default();
        if let Some(list) = &olist {
            o.parse(list, descs).map_err(Fail::msg)?;
        }
        if let Some(b) = &base {
            o.set("backing_file", b);
        }
        if let Some(f) = &base_fmt {
            o.set("backing_fmt", f);
        }
        let backing = o.get("backing_file").map(str::to_string);
        let bfmt = match o.get("backing_fmt") {
            Some(f) => Some(
                parse_format(f)
                    .ok_or_else(|| Fail::msg(format!("Unknown backing file format '{f}'")))?,
            ),
            None => None,
        };
        if backing.is_some() && bfmt.is_none() {
            return Err(Fail::msg(
                "Use of backing file requires explicit backing format",
            ));
        }
        if backing.is_some() && out_format == Format::Raw {
            return Err(Fail::msg(
                "Backing file not supported for file format 'raw'",
            ));
        }
        let mut copts = crate::create::build_options(out_format, total, &o, backing, bfmt)
            .map_err(|m| {
                Fail::msg(format!(
                    "{out_filename}: error while converting {out_fmt}: {m}"
                ))
            })?;
        copts.size = Some(total);
        block::create(Path::new(out_filename), &copts).map_err(|e| {
            Fail::msg(format!(
                "{out_filename}: error while converting {out_fmt}: {}",
                block_text(&e)
            ))
        })?;
        let d = Image::open(
            Path::new(out_filename),
            &block::OpenOptions {
                format: Some(out_format),
                ..Default::default()
            },
        )
        .map_err(|e| Fail::msg(crate::open_error(out_filename, &e)))?;
        d
    };

    let pb = progress_bar(progress);
    progress_set(&pb, 0, total);
    let tz = !skip_create || target_is_zero;
    let r = if sources.len() == 1 && base.is_none() {
        let mut cb = |done: u64, t: u64| progress_set(&pb, done, t);
        let cb_ref: &mut dyn FnMut(u64, u64) = &mut cb;
        block::convert(
            &mut sources[0],
            &mut dst,
            &ConvertOptions {
                compress,
                target_is_zero: tz,
            },
            if pb.is_some() { Some(cb_ref) } else { None },
        )
        .map_err(|e| format!("error while writing at byte 0: {}", block_text(&e)))
    } else {
        if compress {
            return Err(Fail::msg("-c with several sources or -B is not supported"));
        }
        copy_loop(&mut sources, &mut dst, base.is_some(), tz, &pb, total)
    };
    if let Some(pb) = &pb {
        pb.finish();
    }
    r.map_err(Fail::msg)?;
    Ok(0)
}

/// Copies several sources end to end (or, with `-B`, only what each
/// source's top image holds: the new backing provides the rest).
fn copy_loop(
    sources: &mut [Image],
    dst: &mut Image,
    top_only: bool,
    target_is_zero: bool,
    pb: &Option<indicatif::ProgressBar>,
    total: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; IO_BUF as usize];
    let mut base_off = 0u64;
    let mut done = 0u64;
    for src in sources.iter_mut() {
        let size = src.size();
        let mut off = 0;
        while off < size {
            let len = (size - off).min(1 << 30);
            let exts = src.block_status(off, len).map_err(|e| block_text(&e))?;
            if exts.is_empty() {
                return Err(format!("error while reading block status at offset {off}"));
            }
            for e in exts {
                let end = (e.offset + e.length).min(size);
                let skip = if top_only {
                    !(e.present && e.depth == 0)
                } else {
                    e.zero && target_is_zero
                };
                if !skip {
                    if e.zero && !e.data {
                        dst.write_zeroes(base_off + e.offset, end - e.offset)
                            .map_err(|er| {
                                format!(
                                    "error while writing at byte {}: {}",
                                    base_off + e.offset,
                                    block_text(&er)
                                )
                            })?;
                    } else {
                        let mut o = e.offset;
                        while o < end {
                            let n = (end - o).min(IO_BUF) as usize;
                            src.read_at(&mut buf[..n], o).map_err(|er| {
                                format!("error while reading at byte {o}: {}", block_text(&er))
                            })?;
                            if !(target_is_zero && !top_only && buf[..n].iter().all(|&b| b == 0)) {
                                dst.write_at(&buf[..n], base_off + o).map_err(|er| {
                                    format!(
                                        "error while writing at byte {}: {}",
                                        base_off + o,
                                        block_text(&er)
                                    )
                                })?;
                            }
                            o += n as u64;
                            progress_set(pb, done + o, total);
                        }
                    }
                }
                off = end;
            }
        }
        base_off += size;
        done += size;
    }
    dst.flush().map_err(|e| block_text(&e))
}

pub(crate) fn compare(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(args, "hf:F:T:pqsU", &common()).map_err(Fail::Getopt)?;
    let mut fmt1 = None;
    let mut fmt2 = None;
    let mut strict = false;
    let mut progress = false;
    for (k, v) in p.opts {
        reject_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n");
                return Ok(0);
            }
            "f" => fmt1 = Some(v),
            "F" => fmt2 = Some(v),
            "T" => {
                parse_cache(&v)
                    .ok_or_else(|| Fail::Error(format!("Invalid source cache option: {v}"), 2))?;
            }
            "p" => progress = true,
            "q" => ctx.quiet = true,
            "s" => strict = true,
            _ => {}
        }
    }
    if p.operands.len() != 2 {
        return Err(Fail::Usage("Expecting two image file names".into()));
    }
    let (f1, f2) = (&p.operands[0], &p.operands[1]);
    let fmt2 = fmt2.or_else(|| fmt1.clone());
    let as2 = |f: Fail| match f {
        Fail::Error(m, _) => Fail::Error(m, 2),
        other => other,
    };
    let mut a = open_image(
        ctx,
        f1,
        fmt1.as_deref(),
        Open {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(as2)?;
    let mut b = open_image(
        ctx,
        f2,
        fmt2.as_deref(),
        Open {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(as2)?;
    let pb = progress_bar(progress && !ctx.quiet);
    let r = compare_images(ctx, &mut a, &mut b, f1, f2, strict, &pb);
    if let Some(pb) = &pb {
        pb.finish();
    }
    r
}

/// Status flags compared in strict mode.
fn status_key(e: &block::Extent) -> (bool, bool, bool) {
    (e.present, e.data, e.zero)
}

fn first_extent(img: &mut Image, off: u64, name: &str) -> Result<block::Extent, Fail> {
    let len = (img.size() - off).min(1 << 30);
    let exts = img
        .block_status(off, len)
        .map_err(|_| Fail::Error(format!("Sector allocation test failed for {name}"), 3))?;
    exts.into_iter()
        .find(|e| e.offset + e.length > off)
        .ok_or_else(|| Fail::Error(format!("Sector allocation test failed for {name}"), 3))
}

/// First 512-byte sector where the buffers differ (qemu reports that).
fn first_diff_sector(a: &[u8], b: &[u8]) -> Option<usize> {
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    Some(i / 512 * 512)
}

fn first_nonzero_sector(a: &[u8]) -> Option<usize> {
    let i = a.iter().position(|&x| x != 0)?;
    Some(i / 512 * 512)
}

fn compare_images(
    ctx: &mut Ctx,
    a: &mut Image,
    b: &mut Image,
    f1: &str,
    f2: &str,
    strict: bool,
    pb: &Option<indicatif::ProgressBar>,
) -> CmdResult {
    let (s1, s2) = (a.size(), b.size());
    let common = s1.min(s2);
    let progress_base = s1.max(s2);
    if strict && s1 != s2 {
        ctx.print("Strict mode: Image size mismatch!\n");
        return Ok(1);
    }
    let mut buf1 = vec![0u8; IO_BUF as usize];
    let mut buf2 = vec![0u8; IO_BUF as usize];
    let rerr = |off: u64, name: &str, e: block::Error| {
        Fail::Error(
            format!(
                "Error while reading offset {off} of {name}: {}",
                block_text(&e)
            ),
            4,
        )
    };
    let mut off = 0u64;
    while off < common {
        let e1 = first_extent(a, off, f1)?;
        let e2 = first_extent(b, off, f2)?;
        let chunk = (e1.offset + e1.length)
            .min(e2.offset + e2.length)
            .min(common)
            - off;
        if strict && status_key(&e1) != status_key(&e2) {
            ctx.print(&format!(
                "Strict mode: Offset {off} block status mismatch!\n"
            ));
            return Ok(1);
        }
        let zero1 = e1.zero && !e1.data;
        let zero2 = e2.zero && !e2.data;
        if !(zero1 && zero2) {
            let n = chunk.min(IO_BUF) as usize;
            if zero1 || zero2 {
                let (img, name) = if zero1 { (&mut *b, f2) } else { (&mut *a, f1) };
                img.read_at(&mut buf1[..n], off)
                    .map_err(|e| rerr(off, name, e))?;
                if let Some(i) = first_nonzero_sector(&buf1[..n]) {
                    ctx.print(&format!("Content mismatch at offset {}!\n", off + i as u64));
                    return Ok(1);
                }
            } else {
                a.read_at(&mut buf1[..n], off)
                    .map_err(|e| rerr(off, f1, e))?;
                b.read_at(&mut buf2[..n], off)
                    .map_err(|e| rerr(off, f2, e))?;
                if let Some(i) = first_diff_sector(&buf1[..n], &buf2[..n]) {
                    ctx.print(&format!("Content mismatch at offset {}!\n", off + i as u64));
                    return Ok(1);
                }
            }
            off += n as u64;
        } else {
            off += chunk;
        }
        progress_set(pb, off, progress_base);
    }
    if s1 != s2 {
        ctx.print("Warning: Image size mismatch!\n");
        let (img, name) = if s1 > s2 { (a, f1) } else { (b, f2) };
        while off < progress_base {
            let e = first_extent(img, off, name)?;
            let end = (e.offset + e.length).min(progress_base);
            if e.data && !e.zero {
                let n = (end - off).min(IO_BUF) as usize;
                img.read_at(&mut buf1[..n], off)
                    .map_err(|er| rerr(off, name, er))?;
                if let Some(i) = first_nonzero_sector(&buf1[..n]) {
                    ctx.print(&format!("Content mismatch at offset {}!\n", off + i as u64));
                    return Ok(1);
                }
                off += n as u64;
            } else {
                off = end;
            }
            progress_set(pb, off, progress_base);
        }
    }
    ctx.print("Images are identical.\n");
    Ok(0)
}

pub(crate) fn resize(args: &[String], ctx: &mut Ctx) -> CmdResult {
    // The size is always the last word, taken out before option parsing so
    // that "-1G" is not read as an option (as qemu-img does).
    if args.len() < 2 {
        return Err(Fail::Usage("Not enough arguments".into()));
    }
    let size_arg = &args[args.len() - 1];
    let mut longs = common();
    longs.push(long("shrink", HasArg::No, "shrink"));
    longs.push(long("preallocation", HasArg::Required, "preallocation"));
    let p = parse(&args[..args.len() - 1], "f:hq", &longs).map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut opts = ResizeOptions::default();
    for (k, v) in p.opts {
        reject_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img resize [--shrink] [-f fmt] [--preallocation=prealloc] [-q] filename [+ | -]size\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "q" => ctx.quiet = true,
            "shrink" => opts.shrink = true,
            "preallocation" => {
                opts.preallocation = match v.as_str() {
                    "off" => block::Preallocation::Off,
                    "metadata" => block::Preallocation::Metadata,
                    "falloc" => block::Preallocation::Falloc,
                    "full" => block::Preallocation::Full,
                    _ => return Err(Fail::msg(format!("Invalid preallocation mode '{v}'"))),
                }
            }
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting image file name and size".into()));
    }
    let filename = &p.operands[0];
    let (rel, num) = match size_arg.as_bytes().first() {
        Some(b'+') => (1i8, &size_arg[1..]),
        Some(b'-') => (-1, &size_arg[1..]),
        _ => (0, size_arg.as_str()),
    };
    let n =
        crate::size::strtosz(num).map_err(|_| Fail::msg(crate::size::opt_size_error("size")))?;
    let mut img = open_image(ctx, filename, fmt.as_deref(), Open::default())?;
    let cur = img.size();
    let new: i128 = match rel {
        1 => cur as i128 + n as i128,
        -1 => cur as i128 - n as i128,
        _ => n as i128,
    };
    if new <= 0 {
        return Err(Fail::msg("New image size must be positive"));
    }
    if new > i64::MAX as i128 {
        return Err(Fail::msg("Image size must be less than 8 EiB!"));
    }
    let new = new as u64;
    if new < cur && !opts.shrink {
        ctx.error("Use the --shrink option to perform a shrink operation.");
        ctx.error(
            "warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        );
        return Err(Fail::Code(1));
    }
    img.resize(new, &opts)
        .map_err(|e| Fail::msg(format!("Error resizing image: {}", block_text(&e))))?;
    img.flush()
        .map_err(|e| Fail::msg(format!("Error resizing image: {}", block_text(&e))))?;
    ctx.print("Image resized.\n");
    Ok(0)
}

pub(crate) fn commit(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(args, "f:ht:b:dpqr:", &common()).map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut copts = CommitOptions::default();
    let mut progress = false;
    for (k, v) in p.opts {
        reject_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "t" => {
                parse_cache(&v).ok_or_else(|| Fail::msg(format!("Invalid cache option: {v}")))?;
            }
            "b" => {
                copts.base = Some(v.into());
                // qemu-img: -b implies -d.
                copts.drop = true;
            }
            "d" => copts.drop = true,
            "p" => progress = true,
            "q" => ctx.quiet = true,
            "r" => {
                crate::size::cvtnum("rate limit", &v).map_err(Fail::msg)?;
            }
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    if let Some(f) = &fmt {
        parse_format(f).ok_or_else(|| {
            Fail::msg(format!("Could not open '{filename}': Unknown driver '{f}'"))
        })?;
    }
    let pb = progress_bar(progress && !ctx.quiet);
    let mut cb = |d: u64, t: u64| progress_set(&pb, d, t);
    let cb_ref: &mut dyn FnMut(u64, u64) = &mut cb;
    let r = block::commit(
        Path::new(filename),
        &copts,
        if pb.is_some() { Some(cb_ref) } else { None },
    );
    if let Some(pb) = &pb {
        pb.finish();
    }
    r.map_err(|e| Fail::msg(block_text(&e)))?;
    ctx.print("Image committed.\n");
    Ok(0)
}

pub(crate) fn rebase(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(args, "hf:F:b:upt:T:qUc", &common()).map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut backing: Option<String> = None;
    let mut bfmt: Option<String> = None;
    let mut unsafe_ = false;
    let mut progress = false;
    for (k, v) in p.opts {
        reject_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b backing_file [-F backing_fmt] filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "F" => bfmt = Some(v),
            "b" => backing = Some(v),
            "u" => unsafe_ = true,
            "p" => progress = true,
            "t" => {
                parse_cache(&v).ok_or_else(|| Fail::msg(format!("Invalid cache option: {v}")))?;
            }
            "T" => {
                parse_cache(&v)
                    .ok_or_else(|| Fail::msg(format!("Invalid source cache option: {v}")))?;
            }
            "q" => ctx.quiet = true,
            "c" => return Err(Fail::msg("rebase -c is not supported")),
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    let Some(backing) = backing else {
        if !unsafe_ {
            return Err(Fail::Usage(
                "Must specify backing file (-b) or use unsafe mode (-u)".into(),
            ));
        }
        return Err(Fail::Usage("Must specify backing file (-b)".into()));
    };
    if let Some(f) = &fmt {
        parse_format(f).ok_or_else(|| {
            Fail::msg(format!("Could not open '{filename}': Unknown driver '{f}'"))
        })?;
    }
    let backing_format = match &bfmt {
        Some(f) => {
            Some(parse_format(f).ok_or_else(|| Fail::msg(format!("Invalid format name: '{f}'")))?)
        }
        None => None,
    };
    let new_backing = if backing.is_empty() {
        None
    } else {
        Some(backing.clone())
    };
    if let Some(b) = &new_backing {
        if !unsafe_ {
            let full = crate::create::resolve_backing(filename, b);
            let full_s = full.to_string_lossy().to_string();
            block::Image::open(
                &full,
                &block::OpenOptions {
                    format: backing_format,
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| {
                Fail::msg(format!(
                    "Could not open new backing file '{b}': {}",
                    crate::open_error(&full_s, &e)
                ))
            })?;
        }
        if backing_format.is_none() {
            return Err(Fail::msg(format!(
                "Could not change the backing file to '{b}': backing format must be specified"
            )));
        }
    }
    let ropts = RebaseOptions {
        backing: new_backing,
        backing_format,
        unsafe_mode: unsafe_,
    };
    let pb = progress_bar(progress && !ctx.quiet);
    let mut cb = |d: u64, t: u64| progress_set(&pb, d, t);
    let cb_ref: &mut dyn FnMut(u64, u64) = &mut cb;
    let r = block::rebase(
        Path::new(filename),
        &ropts,
        if pb.is_some() { Some(cb_ref) } else { None },
    );
    if let Some(pb) = &pb {
        pb.finish();
    }
    r.map_err(|e| Fail::msg(block_text(&e)))?;
    Ok(0)
}
