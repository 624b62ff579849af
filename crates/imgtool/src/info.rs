//! Read-mostly commands: `info`, `check`, `map`, `snapshot`. Output formats
//! follow qemu-img 7.2 (human and JSON) byte for byte where we can.

use block::{BlockBackend, CheckReport, Extent, ImageInfo, Repair};

use crate::getopt::{long, parse, HasArg, Long};
use crate::human::{size_to_str, snapshot_header, snapshot_row};
use crate::json::Json;
use crate::{open_image, parse_output, CmdResult, Ctx, Fail, Open, OutFmt};

const COMMON_LONGS: [Long; 4] = [
    long("help", HasArg::No, "h"),
    long("object", HasArg::Required, "object"),
    long("image-opts", HasArg::No, "image-opts"),
    long("force-share", HasArg::No, "U"),
];

fn with_common(extra: &[Long]) -> Vec<Long> {
    let mut v = COMMON_LONGS.to_vec();
    v.extend_from_slice(extra);
    v
}

fn unsupported_common(k: &str) -> Result<(), Fail> {
    match k {
        "object" => Err(Fail::msg("--object is not supported")),
        "image-opts" => Err(Fail::msg("--image-opts is not supported")),
        _ => Ok(()),
    }
}

pub(crate) fn info(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(
        args,
        "f:hU",
        &with_common(&[
            long("format", HasArg::Required, "f"),
            long("output", HasArg::Required, "output"),
            long("backing-chain", HasArg::No, "backing-chain"),
        ]),
    )
    .map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut out = "human".to_string();
    let mut chain = false;
    for (k, v) in p.opts {
        unsupported_common(&k)?;
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n");
                return Ok(0);
            }
            "f" => fmt = v,
            "output" => out = v.unwrap_or_default(),
            "backing-chain" => chain = true,
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    let ofmt = parse_output(&out)?;
    let mut infos = Vec::new();
    let img = open_image(
        ctx,
        filename,
        fmt.as_deref(),
        Open {
            read_only: true,
            no_backing: true,
            ..Default::default()
        },
    )?;
    let first = img.info().map_err(|e| Fail::msg(crate::block_text(&e)))?;
    drop(img);
    let mut next = first
        .full_backing_filename
        .clone()
        .map(|f| (f, first.backing_format.clone()));
    let mut seen = vec![first.filename.clone()];
    infos.push(first);
    if chain {
        while let Some((path, bfmt)) = next.take() {
            if seen.contains(&path) {
                return Err(Fail::msg(format!(
                    "Backing file '{path}' creates an infinite loop."
                )));
            }
            let img = open_image(
                ctx,
                &path,
                bfmt.as_deref(),
                Open {
                    read_only: true,
                    no_backing: true,
                    ..Default::default()
                },
            )?;
            let mut i = img.info().map_err(|e| Fail::msg(crate::block_text(&e)))?;
            i.filename = path.clone();
            seen.push(path);
            next = i
                .full_backing_filename
                .clone()
                .map(|f| (f, i.backing_format.clone()));
            infos.push(i);
        }
    }
    match ofmt {
        OutFmt::Json => {
            let text = if chain {
                Json::Arr(infos.iter().map(info_json).collect()).pretty()
            } else {
                info_json(&infos[0]).pretty()
            };
            ctx.print(&text);
        }
        OutFmt::Human => {
            for (n, i) in infos.iter().enumerate() {
                if n > 0 {
                    ctx.print("\n");
                }
                ctx.print(&info_human(i));
            }
        }
    }
    Ok(0)
}

/// The file's length as the block layer sees it: whole 512-byte sectors.
fn protocol_length(i: &ImageInfo) -> u64 {
    i.file_length.div_ceil(512) * 512
}

/// `qemu-img info --output=json` for one image.
pub fn info_json(i: &ImageInfo) -> Json {
    // qemu-img 10 reports the protocol layer (the host file) as a child.
    let file = Json::obj([
        ("children", Json::Arr(vec![])),
        ("virtual-size", Json::int(protocol_length(i))),
        ("filename", Json::str(&i.filename)),
        ("format", Json::str("file")),
        ("actual-size", Json::int(i.actual_size)),
        (
            "format-specific",
            Json::obj([("type", Json::str("file")), ("data", Json::obj::<&str>([]))]),
        ),
        ("dirty-flag", Json::Bool(false)),
    ]);
    let mut o: Vec<(&str, Json)> = vec![
        ("filename", Json::str(&i.filename)),
        ("format", Json::str(i.format.name())),
        ("dirty-flag", Json::Bool(i.dirty_flag)),
        ("actual-size", Json::int(i.actual_size)),
        ("virtual-size", Json::int(i.virtual_size)),
    ];
    if let Some(b) = &i.backing_filename {
        o.push(("backing-filename", Json::str(b)));
        if let Some(f) = &i.full_backing_filename {
            o.push(("full-backing-filename", Json::str(f)));
        }
        if let Some(f) = &i.backing_format {
            o.push(("backing-filename-format", Json::str(f)));
        }
    }
    if let Some(cs) = i.cluster_size {
        o.push(("cluster-size", Json::int(cs)));
    }
    if !i.snapshots.is_empty() {
        let snaps = i
            .snapshots
            .iter()
            .map(|s| {
                let mut f = vec![
                    ("id", Json::str(&s.id)),
                    ("name", Json::str(&s.name)),
                    ("vm-state-size", Json::int(s.vm_state_size)),
                    ("date-sec", Json::int(s.date_sec)),
                    ("date-nsec", Json::int(s.date_nsec)),
                    ("vm-clock-sec", Json::int(s.vm_clock_nsec / 1_000_000_000)),
                    ("vm-clock-nsec", Json::int(s.vm_clock_nsec % 1_000_000_000)),
                ];
                if let Some(ic) = s.icount {
                    f.push(("icount", Json::int(ic)));
                }
                Json::obj(f)
            })
            .collect();
        o.push(("snapshots", Json::Arr(snaps)));
    }
    if let Some(q) = &i.qcow2 {
        let mut d = vec![
            ("compat", Json::str(q.compat.name())),
            ("compression-type", Json::str(q.compression_type.name())),
        ];
        if q.compat == block::Compat::V3 {
            d.push(("lazy-refcounts", Json::Bool(q.lazy_refcounts)));
        }
        d.push(("refcount-bits", Json::int(q.refcount_bits)));
        if q.compat == block::Compat::V3 {
            d.push(("corrupt", Json::Bool(q.corrupt)));
            d.push(("extended-l2", Json::Bool(q.extended_l2)));
        }
        o.push((
            "format-specific",
            Json::obj([("type", Json::str("qcow2")), ("data", Json::obj(d))]),
        ));
    }
    // Inserted last, as QAPI's BlockGraphInfo adds it after BlockNodeInfo's
    // fields: within a shared hash bucket that decides the printed order.
    o.push((
        "children",
        Json::Arr(vec![Json::obj([
            ("name", Json::str("file")),
            ("info", file),
        ])]),
    ));
    Json::obj(o)
}

/// `qemu-img info` (human) for one image.
pub fn info_human(i: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename,
        i.format,
        size_to_str(i.virtual_size),
        i.virtual_size,
        size_to_str(i.actual_size)
    );
    if let Some(cs) = i.cluster_size {
        s += &format!("cluster_size: {cs}\n");
    }
    if i.dirty_flag {
        s += "cleanly shut down: no\n";
    }
    if let Some(b) = &i.backing_filename {
        s += &format!("backing file: {b}");
        match &i.full_backing_filename {
            None => s += " (cannot determine actual path)",
            Some(f) if f != b => s += &format!(" (actual path: {f})"),
            _ => {}
        }
        s += "\n";
        if let Some(f) = &i.backing_format {
            s += &format!("backing file format: {f}\n");
        }
    }
    if !i.snapshots.is_empty() {
        s += "Snapshot list:\n";
        s += &snapshot_table(&i.snapshots);
    }
    if let Some(Json::Obj(fs)) = info_json(i).as_obj_field("format-specific") {
        if let Some((_, Json::Obj(data))) = fs.iter().find(|(k, _)| k == "data") {
            s += "Format specific information:\n";
            let mut order: Vec<&(String, Json)> = data.iter().rev().collect();
            order.sort_by_key(|(k, _)| crate::json::qdict_bucket(k));
            for (k, v) in order {
                let v = match v {
                    Json::Bool(b) => b.to_string(),
                    Json::Int(n) => n.to_string(),
                    Json::Str(t) => t.clone(),
                    _ => continue,
                };
                s += &format!("    {}: {}\n", k.replace('-', " "), v);
            }
        }
    }
    s += &format!(
        "Child node '/file':\n    filename: {}\n    protocol type: file\n    \
         file length: {} ({} bytes)\n    disk size: {}\n",
        i.filename,
        size_to_str(protocol_length(i)),
        protocol_length(i),
        size_to_str(i.actual_size)
    );
    s
}

impl Json {
    fn as_obj_field(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The header and rows of the snapshot table (each line ends in '\n').
pub fn snapshot_table(snaps: &[block::SnapshotInfo]) -> String {
    let mut s = snapshot_header();
    s.push('\n');
    for sn in snaps {
        s += &snapshot_row(
            &sn.id,
            &sn.name,
            sn.vm_state_size,
            sn.date_sec as i64,
            sn.vm_clock_nsec,
            sn.icount,
        );
        s.push('\n');
    }
    s
}

pub(crate) fn check(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(
        args,
        "hf:r:T:qU",
        &with_common(&[
            long("format", HasArg::Required, "f"),
            long("repair", HasArg::Required, "r"),
            long("output", HasArg::Required, "output"),
        ]),
    )
    .map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut out = "human".to_string();
    let mut repair = Repair::None;
    for (k, v) in p.opts {
        unsupported_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "r" => {
                repair = match v.as_str() {
                    "leaks" => Repair::Leaks,
                    "all" => Repair::All,
                    _ => {
                        return Err(Fail::Usage(format!(
                            "--repair (-r) expects 'leaks' or 'all' not '{v}'"
                        )))
                    }
                }
            }
            "output" => out = v,
            "T" => {
                crate::parse_cache(&v)
                    .ok_or_else(|| Fail::msg(format!("Invalid source cache option: {v}")))?;
            }
            "q" => ctx.quiet = true,
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    let ofmt = parse_output(&out)?;
    let mut img = open_image(
        ctx,
        filename,
        fmt.as_deref(),
        Open {
            read_only: repair == Repair::None,
            no_backing: true,
            check: true,
        },
    )?;
    let format = img.format();
    let mut report = match img.check(repair) {
        Ok(r) => r,
        Err(block::Error::Unsupported(_)) => {
            return Err(Fail::Error(
                "This image format does not support checks".into(),
                63,
            ))
        }
        Err(e) => {
            return Err(Fail::msg(format!(
                "Check failed: {}",
                crate::block_text(&e)
            )))
        }
    };
    print_messages(ctx, &report);
    if repair != Repair::None && (report.corruptions_fixed > 0 || report.leaks_fixed > 0) {
        if ofmt == OutFmt::Human {
            ctx.print(&format!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                report.leaks_fixed, report.corruptions_fixed
            ));
        }
        let (lf, cf) = (report.leaks_fixed, report.corruptions_fixed);
        report = img
            .check(Repair::None)
            .map_err(|e| Fail::msg(format!("Check failed: {}", crate::block_text(&e))))?;
        print_messages(ctx, &report);
        report.leaks_fixed = lf;
        report.corruptions_fixed = cf;
    }
    match ofmt {
        OutFmt::Human => ctx.print(&check_human(&report)),
        OutFmt::Json => ctx.print(&check_json(&report, filename, format.name()).pretty()),
    }
    if report.check_errors > 0 {
        return Err(Fail::msg("Check failed"));
    }
    Ok(report.exit_code())
}

fn print_messages(ctx: &mut Ctx, r: &CheckReport) {
    for m in &r.messages {
        let _ = writeln!(ctx.err, "{m}");
    }
}

/// qemu-img's `dump_human_image_check`.
pub fn check_human(c: &CheckReport) -> String {
    let mut s = String::new();
    if c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0 {
        s += "No errors were found on the image.\n";
    } else {
        if c.corruptions > 0 {
            s += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                c.corruptions
            );
        }
        if c.leaks > 0 {
            s += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                c.leaks
            );
        }
        if c.check_errors > 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                c.check_errors
            );
        }
    }
    if c.total_clusters != 0 && c.allocated_clusters != 0 {
        let a = c.allocated_clusters as f64;
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            c.allocated_clusters,
            c.total_clusters,
            a * 100.0 / c.total_clusters as f64,
            c.fragmented_clusters as f64 * 100.0 / a,
            c.compressed_clusters as f64 * 100.0 / a
        );
    }
    if c.image_end_offset != 0 {
        s += &format!("Image end offset: {}\n", c.image_end_offset);
    }
    s
}

/// qemu-img's `check --output=json` object.
pub fn check_json(c: &CheckReport, filename: &str, format: &str) -> Json {
    let mut o = vec![
        ("filename", Json::str(filename)),
        ("format", Json::str(format)),
        ("check-errors", Json::int(c.check_errors)),
    ];
    let opt = [
        ("corruptions", c.corruptions),
        ("leaks", c.leaks),
        ("corruptions-fixed", c.corruptions_fixed),
        ("leaks-fixed", c.leaks_fixed),
        ("image-end-offset", c.image_end_offset),
        ("total-clusters", c.total_clusters),
        ("allocated-clusters", c.allocated_clusters),
        ("fragmented-clusters", c.fragmented_clusters),
        ("compressed-clusters", c.compressed_clusters),
    ];
    for (k, v) in opt {
        if v != 0 {
            o.push((k, Json::int(v)));
        }
    }
    Json::obj(o)
}

pub(crate) fn map(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(
        args,
        "f:hU",
        &with_common(&[
            long("format", HasArg::Required, "f"),
            long("output", HasArg::Required, "output"),
            long("start-offset", HasArg::Required, "start-offset"),
            long("max-length", HasArg::Required, "max-length"),
        ]),
    )
    .map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut out = "human".to_string();
    let mut start = 0u64;
    let mut max_len: Option<u64> = None;
    for (k, v) in p.opts {
        unsupported_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img map [--output=ofmt] [-f fmt] [--start-offset=offset] [--max-length=len] [-U] filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "output" => out = v,
            "start-offset" => {
                start = crate::size::cvtnum("start offset", &v).map_err(Fail::msg)? as u64
            }
            "max-length" => {
                max_len = Some(crate::size::cvtnum("max length", &v).map_err(Fail::msg)? as u64)
            }
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    let ofmt = parse_output(&out)?;
    let mut img = open_image(
        ctx,
        filename,
        fmt.as_deref(),
        Open {
            read_only: true,
            ..Default::default()
        },
    )?;
    // File names per depth, for the human format's "File" column.
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    {
        let mut cur = Some(&img);
        while let Some(i) = cur {
            names.push(i.path().to_string_lossy().to_string());
            sizes.push(i.size());
            cur = i.backing();
        }
    }
    let size = img.size();
    let end = match max_len {
        Some(l) => size.min(start.saturating_add(l)),
        None => size,
    };
    if ofmt == OutFmt::Human {
        ctx.print(&format!(
            "{:<16}{:<16}{:<16}{}\n",
            "Offset", "Length", "Mapped to", "File"
        ));
    } else {
        ctx.print("[");
    }
    let mut pending: Option<Extent> = None;
    let mut first = true;
    let mut off = start;
    const CHUNK: u64 = 1 << 30;
    while off < end {
        let len = (end - off).min(CHUNK);
        let exts = img
            .block_status(off, len)
            .map_err(|e| Fail::msg(crate::block_text(&e)))?;
        if exts.is_empty() {
            return Err(Fail::msg(format!(
                "Could not get block status at offset {off}"
            )));
        }
        for e in exts {
            let mut e = Extent {
                length: e.length.min(end - e.offset),
                ..e
            };
            if !e.present {
                // Past the end of a backing file the overlay itself reports
                // zeroes (qemu stops the walk there).
                let mut d = 0;
                while d + 1 < sizes.len() && e.offset < sizes[d + 1] {
                    d += 1;
                }
                e.depth = d as u32;
            }
            if e.length == 0 {
                continue;
            }
            off = e.offset + e.length;
            match &mut pending {
                Some(p) if mergeable(p, &e) => p.length += e.length,
                _ => {
                    if let Some(p) = pending.take() {
                        emit(ctx, ofmt, &p, &names, &mut first, Some(&e))?;
                    }
                    pending = Some(e);
                }
            }
        }
    }
    if let Some(p) = pending.take() {
        emit(ctx, ofmt, &p, &names, &mut first, None)?;
    }
    if ofmt == OutFmt::Json {
        ctx.print("]\n");
    }
    Ok(0)
}

fn mergeable(a: &Extent, b: &Extent) -> bool {
    a.offset + a.length == b.offset
        && a.data == b.data
        && a.zero == b.zero
        && a.present == b.present
        && a.depth == b.depth
        && match (a.host_offset, b.host_offset) {
            (None, None) => true,
            (Some(x), Some(y)) => x + a.length == y,
            _ => false,
        }
}

fn emit(
    ctx: &mut Ctx,
    ofmt: OutFmt,
    e: &Extent,
    names: &[String],
    first: &mut bool,
    next: Option<&Extent>,
) -> Result<(), Fail> {
    let _ = next;
    match ofmt {
        OutFmt::Json => {
            let mut s = String::new();
            if !*first {
                s.push_str(",\n");
            }
            s += &format!(
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                e.offset, e.length, e.depth, e.present, e.zero, e.data,
                // Data without a plain host mapping is a compressed cluster
                // (ferro has no external data files or encryption).
                e.data && e.host_offset.is_none()
            );
            if let Some(h) = e.host_offset {
                s += &format!(", \"offset\": {h}");
            }
            s.push('}');
            ctx.print(&s);
        }
        OutFmt::Human => {
            if e.data && e.host_offset.is_none() {
                return Err(Fail::msg(
                    "File contains external, encrypted or compressed clusters.",
                ));
            }
            if e.data && !e.zero {
                let name = names
                    .get(e.depth as usize)
                    .map(String::as_str)
                    .unwrap_or("");
                ctx.print(&format!(
                    "{}{}{}{}\n",
                    crate::human::hex16(e.offset),
                    crate::human::hex16(e.length),
                    crate::human::hex16(e.host_offset.unwrap_or(0)),
                    name
                ));
            }
        }
    }
    *first = false;
    Ok(())
}

pub(crate) fn snapshot(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(args, "la:c:d:f:hqU", &with_common(&[])).map_err(Fail::Getopt)?;
    let mut fmt = None;
    let mut action: Option<(char, String)> = None;
    for (k, v) in p.opts {
        unsupported_common(&k)?;
        let v = v.unwrap_or_default();
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img snapshot [-q] [-l | -a snapshot | -c snapshot | -d snapshot] [-U] filename\n");
                return Ok(0);
            }
            "f" => fmt = Some(v),
            "q" => ctx.quiet = true,
            "l" | "a" | "c" | "d" => {
                if action.is_some() {
                    return Err(Fail::Usage("Cannot mix '-l', '-a', '-c', '-d'".into()));
                }
                action = Some((k.chars().next().unwrap_or('l'), v));
            }
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let filename = &p.operands[0];
    let (act, name) = action.unwrap_or(('l', String::new()));
    let mut img = open_image(
        ctx,
        filename,
        fmt.as_deref(),
        Open {
            read_only: act == 'l',
            no_backing: true,
            ..Default::default()
        },
    )?;
    let r = match act {
        'l' => {
            let snaps = img.snapshots();
            if !snaps.is_empty() {
                ctx.print(&format!("Snapshot list:\n{}", snapshot_table(&snaps)));
            }
            return Ok(0);
        }
        'c' => img
            .snapshot_create(&name)
            .map_err(|e| snap_error("create", &name, &e)),
        'a' => img
            .snapshot_apply(&name)
            .map_err(|e| snap_error("apply", &name, &e)),
        _ => img
            .snapshot_delete(&name)
            .map_err(|e| snap_error("delete", &name, &e)),
    };
    r.map_err(Fail::msg)?;
    img.flush().map_err(|e| Fail::msg(crate::block_text(&e)))?;
    Ok(0)
}

/// qemu-img's snapshot error lines ("Could not apply snapshot 'x': …").
fn snap_error(verb: &str, name: &str, e: &block::Error) -> String {
    let text = crate::block_text(e);
    let prefix = format!("Could not {verb} snapshot '{name}': ");
    let why = text.strip_prefix(&prefix).unwrap_or(&text);
    let why = match (verb, why) {
        ("apply", "snapshot not found") => "Failed to load snapshot: No such file or directory",
        _ => why,
    };
    format!("{prefix}{why}")
}
