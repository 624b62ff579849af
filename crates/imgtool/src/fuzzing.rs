//! The body of the `img_cli_parsers` fuzz target: arbitrary bytes as
//! command-line words through every parser `ferro img` applies to user input
//! (getopt, sizes, `-o` lists) and the formatters fed by parsed numbers.
//! Errors are fine; panics and hangs are the bugs.

use crate::getopt::{long, parse, HasArg};
use crate::opts::{self, Opts};

/// Splits `data` at NUL bytes into words and parses them every way.
pub fn cli_parsers(data: &[u8]) {
    let words: Vec<String> = data
        .split(|&b| b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let longs = [
        long("help", HasArg::No, "h"),
        long("output", HasArg::Required, "output"),
        long("backing-chain", HasArg::No, "backing-chain"),
        long("flush-interval", HasArg::Required, "flush-interval"),
    ];
    for spec in [
        "F:b:f:ho:qu",
        "hf:O:B:CcF:o:l:S:pt:T:qnm:Wr:U",
        "hc:d:f:ni:o:qs:S:t:wU",
        "",
    ] {
        let _ = parse(&words, spec, &longs);
    }
    for w in &words {
        if let Ok(v) = crate::size::strtosz(w) {
            let _ = crate::human::size_to_str(v);
            let _ = crate::human::hex16(v);
        }
        let _ = crate::size::cvtnum("image size", w);
        let _ = opts::is_valid_option_list(w);
        let _ = opts::has_help(w);
        for descs in [opts::QCOW2, opts::RAW] {
            let mut o = Opts::default();
            if o.parse(w, descs).is_ok() {
                let _ = o.print(descs);
                let _ = crate::create::build_options(block::Format::Qcow2, 1 << 20, &o, None, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus() {
        let corpus: &[&[u8]] = &[
            b"",
            b"\0\0\0",
            b"-f\0qcow2\0-o\0cluster_size=64k,,x,lazy_refcounts\0a\x001G",
            b"--output=json\0--out\0-qqqqf",
            b"18446744073709551615E\0\xff\xfe\0-\0--\0--=\0-o",
            b"0x\x000x1e\x001.\x00.5k\x0099999999999999999999999999999k",
            b"cluster_size=0,refcount_bits=0xffffffffffffffff,compat=,,,,",
            b"extended_l2=on,cluster_size=512,preallocation=metadata",
        ];
        for c in corpus {
            super::cli_parsers(c);
        }
    }
}
