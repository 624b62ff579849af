//! Human-readable pieces shared by several subcommands, byte-compatible with
//! qemu-img: sizes ("1.26 MiB"), the snapshot table, C's `%#-16x`.

/// C's `printf("%0.3g", v)` for finite non-negative `v`.
pub fn g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.2e}", v);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    let strip = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..3).contains(&x) {
        let m = strip(mant.to_string());
        format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs())
    } else {
        strip(format!("{:.*}", (2 - x) as usize, v))
    }
}

/// QEMU's `size_to_str`: binary units, three significant digits.
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // frexp's exponent of val*1024/1000, so that 1000..1023 move up a unit.
    let scaled = val as f64 / (1000.0 / 1024.0);
    let e = if scaled == 0.0 {
        0
    } else {
        scaled.log2().floor() as i32 + 1
    };
    let i = (((e - 1).max(0)) / 10).min(6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", g3(val as f64 / div), SUFFIXES[i])
}

/// C's `%#-16x` (no `0x` for zero), as `qemu-img map` prints.
pub fn hex16(v: u64) -> String {
    let s = if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    };
    format!("{s:<16}")
}

/// The snapshot table header (`bdrv_snapshot_dump(NULL)`).
pub fn snapshot_header() -> String {
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    )
}

/// One snapshot table row.
pub fn snapshot_row(
    id: &str,
    name: &str,
    vm_state_size: u64,
    date_sec: i64,
    vm_clock_nsec: u64,
    icount: Option<u64>,
) -> String {
    let secs = vm_clock_nsec / 1_000_000_000;
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (vm_clock_nsec / 1_000_000) % 1000
    );
    let icount = icount.map(|i| i.to_string()).unwrap_or_default();
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        id,
        name,
        size_to_str(vm_state_size),
        local_date(date_sec),
        clock,
        icount
    )
}

/// `strftime("%Y-%m-%d %H:%M:%S", localtime(t))`.
pub fn local_date(t: i64) -> String {
    let tt = t as libc::time_t;
    // SAFETY: `tm` is plain old data; localtime_r only writes into it and
    // reads `tt`, both valid for the duration of the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&tt, &mut tm).is_null() {
            return t.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(200704), "196 KiB");
        assert_eq!(size_to_str(1323008), "1.26 MiB");
        assert_eq!(size_to_str(1 << 30), "1 GiB");
        assert_eq!(size_to_str(10 << 30), "10 GiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1024 * 1023), "0.999 MiB");
        assert_eq!(size_to_str(u64::MAX), "16 EiB");
    }

    #[test]
    fn g3_edges() {
        assert_eq!(g3(999.7), "1e+03");
        assert_eq!(g3(0.5), "0.5");
        assert_eq!(g3(12.345), "12.3");
    }

    #[test]
    fn table() {
        assert_eq!(
            snapshot_header(),
            "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"
        );
        let row = snapshot_row("1", "snap1", 0, 0, 0, Some(0));
        assert!(
            row.starts_with("1       snap1                 0 B "),
            "{row}"
        );
        assert!(row.ends_with("  0000:00:00.000          0"), "{row}");
    }

    #[test]
    fn hex() {
        assert_eq!(hex16(0), "0               ");
        assert_eq!(hex16(0x50000), "0x50000         ");
    }
}
