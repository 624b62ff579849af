//! `ferro img bench`: qemu-img bench's flags, semantics and output. Requests
//! go to `offset + i*step` modulo the image size (qemu-img's pattern: no
//! random offsets; a large step makes a scattered pattern). With `-t none`
//! and `-d N`, N worker threads keep up to N requests in flight through
//! `block::SharedImage` (data of mapped clusters moves outside the engine's
//! lock, like qemu's thread pool). Without O_DIRECT, reads run back to back
//! on one thread (page-cache copies, no latency to hide) and writes on up
//! to 8 threads (the kernel's dirty-page throttling is per thread).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use block::{BlockBackend, Format, Image, OpenOptions, SharedImage};

use crate::getopt::{long, parse, HasArg};
use crate::{block_text, open_image, parse_cache, parse_format, CmdResult, Ctx, Fail, Open};

/// Parsed `bench` parameters.
#[derive(Debug, Clone)]
pub struct BenchParams {
    pub count: u64,
    pub depth: u64,
    pub bufsize: u64,
    pub step: u64,
    pub offset: u64,
    pub write: bool,
    pub pattern: u8,
    pub flush_interval: u64,
    pub drain_on_flush: bool,
    pub direct: bool,
}

pub(crate) fn bench(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let p = parse(
        args,
        "hc:d:f:ni:o:qs:S:t:wU",
        &[
            long("help", HasArg::No, "h"),
            long("flush-interval", HasArg::Required, "flush-interval"),
            long("image-opts", HasArg::No, "image-opts"),
            long("pattern", HasArg::Required, "pattern"),
            long("no-drain", HasArg::No, "no-drain"),
            long("object", HasArg::Required, "object"),
            long("force-share", HasArg::No, "U"),
        ],
    )
    .map_err(Fail::Getopt)?;
    let mut bp = BenchParams {
        count: 75000,
        depth: 64,
        bufsize: 4096,
        step: 0,
        offset: 0,
        write: false,
        pattern: 0,
        flush_interval: 0,
        drain_on_flush: true,
        direct: false,
    };
    let mut fmt = None;
    for (k, v) in p.opts {
        let v = v.unwrap_or_default();
        let num = |s: &str| crate::opts::parse_u64(s).filter(|&n| n <= i32::MAX as u64);
        match k.as_str() {
            "h" => {
                ctx.print("usage: ferro img bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n");
                return Ok(0);
            }
            "c" => {
                bp.count = num(&v).ok_or_else(|| Fail::msg("Invalid request count specified"))?
            }
            "d" => {
                bp.depth = num(&v)
                    .filter(|&d| d > 0)
                    .ok_or_else(|| Fail::msg("Invalid queue depth specified"))?
            }
            "f" => fmt = Some(v),
            "n" => {}
            "i" if !matches!(v.as_str(), "threads" | "native" | "io_uring") => {
                return Err(Fail::msg(format!("Invalid aio option: {v}")));
            }
            "o" => bp.offset = crate::size::cvtnum("offset", &v).map_err(Fail::msg)? as u64,
            "q" => ctx.quiet = true,
            "s" => {
                bp.bufsize = crate::size::cvtnum_full("buffer size", &v, 0, i32::MAX as i64)
                    .map_err(Fail::msg)? as u64
            }
            "S" => {
                bp.step = crate::size::cvtnum_full("step_size", &v, 0, i32::MAX as i64)
                    .map_err(Fail::msg)? as u64
            }
            "t" => bp.direct = parse_cache(&v).ok_or_else(|| Fail::msg("Invalid cache mode"))?,
            "w" => bp.write = true,
            "pattern" => {
                bp.pattern = crate::opts::parse_u64(&v)
                    .filter(|&n| n <= 0xff)
                    .ok_or_else(|| Fail::msg("Invalid pattern byte specified"))?
                    as u8
            }
            "flush-interval" => {
                bp.flush_interval =
                    num(&v).ok_or_else(|| Fail::msg("Invalid flush interval specified"))?
            }
            "no-drain" => bp.drain_on_flush = false,
            "object" | "image-opts" => return Err(Fail::msg(format!("--{k} is not supported"))),
            _ => {}
        }
    }
    if p.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    if !bp.write && bp.flush_interval > 0 {
        return Err(Fail::msg(
            "--flush-interval is only available in write tests",
        ));
    }
    if bp.flush_interval > 0 && bp.flush_interval < bp.depth {
        return Err(Fail::msg("Flush interval can't be smaller than depth"));
    }
    if bp.step == 0 {
        bp.step = bp.bufsize;
    }
    let filename = &p.operands[0];
    let img = open_bench(ctx, filename, fmt.as_deref(), &bp)?;
    ctx.print(&format!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n",
        bp.count,
        if bp.write { "write" } else { "read" },
        bp.bufsize,
        bp.depth,
        bp.offset,
        bp.step
    ));
    if bp.flush_interval > 0 {
        ctx.print(&format!(
            "Sending flush every {} requests\n",
            bp.flush_interval
        ));
    }
    let _ = ctx.out.flush();
    let secs = run_bench(img, &bp).map_err(Fail::msg)?;
    ctx.print(&format!("Run completed in {secs:.3} seconds.\n"));
    Ok(0)
}

fn open_bench(
    ctx: &mut Ctx,
    filename: &str,
    fmt: Option<&str>,
    bp: &BenchParams,
) -> Result<Image, Fail> {
    if bp.direct {
        let format = match fmt {
            Some(f) => Some(parse_format(f).ok_or_else(|| {
                Fail::msg(format!("Could not open '{filename}': Unknown driver '{f}'"))
            })?),
            None => None,
        };
        return open_direct(filename, format, !bp.write)
            .map_err(|e| Fail::msg(crate::open_error(filename, &e)));
    }
    open_image(
        ctx,
        filename,
        fmt,
        Open {
            read_only: !bp.write,
            ..Default::default()
        },
    )
}

fn open_direct(filename: &str, format: Option<Format>, read_only: bool) -> block::Result<Image> {
    let opts = OpenOptions {
        format,
        read_only,
        direct: true,
        ..Default::default()
    };
    Image::open(Path::new(filename), &opts)
}

/// Request `i`'s offset: qemu-img adds `step` and wraps at the image size.
fn req_offset(bp: &BenchParams, size: u64, i: u64) -> u64 {
    if size == 0 {
        return bp.offset.wrapping_add(i.wrapping_mul(bp.step));
    }
    ((bp.offset as u128 + i as u128 * bp.step as u128) % size as u128) as u64
}

/// Writer threads for buffered (`-t writeback`) write benchmarks.
const PAGE_CACHE_WRITERS: u64 = 8;

/// Runs the requests; returns the elapsed seconds.
pub fn run_bench(mut img: Image, bp: &BenchParams) -> Result<f64, String> {
    let size = img.size();
    let err = |e: block::Error| format!("Failed request: {}", block_text(&e));
    // Without O_DIRECT, reads are served from the host page cache: a tight
    // loop on one thread beats a pool (2 cores, no I/O latency to hide).
    // Buffered writes still go to a pool: the kernel throttles each writing
    // thread on dirty pages, so one thread alone waits far longer than
    // qemu's thread pool does.
    let threads = if bp.direct {
        bp.depth.min(64) as usize
    } else if bp.write {
        bp.depth.min(PAGE_CACHE_WRITERS) as usize
    } else {
        1
    };
    if threads <= 1 {
        let t0 = Instant::now();
        let mut buf = vec![bp.pattern; bp.bufsize as usize];
        for i in 0..bp.count {
            let off = req_offset(bp, size, i);
            if bp.write {
                img.write_at(&buf, off).map_err(err)?;
                if bp.flush_interval > 0 && (i + 1).is_multiple_of(bp.flush_interval) {
                    img.flush().map_err(err)?;
                }
            } else {
                img.read_at(&mut buf, off).map_err(err)?;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // qemu-img stops the clock when the last request completes and
        // flushes when it closes the image, untimed; so do we.
        if bp.write {
            img.flush().map_err(err)?;
        }
        return Ok(secs);
    }
    // Up to `depth` requests in flight, one per worker thread, through the
    // engine's thread-safe handle: mapped (and fresh) clusters transfer
    // outside its lock, as qemu's thread pool does.
    let shared = SharedImage::new(img).map_err(err)?;
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mem = AlignedBuf::new(bp.bufsize as usize);
                mem.as_mut().fill(bp.pattern);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bp.count {
                        break;
                    }
                    let off = req_offset(bp, size, i);
                    let r = if bp.write {
                        shared.write_at(mem.as_ref(), off).and_then(|()| {
                            if bp.flush_interval > 0 && (i + 1).is_multiple_of(bp.flush_interval) {
                                shared.flush()
                            } else {
                                Ok(())
                            }
                        })
                    } else {
                        shared.read_at(mem.as_mut(), off)
                    };
                    if let Err(e) = r {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(err(e));
                        next.store(bp.count, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if bp.write {
        shared.flush().map_err(err)?;
    }
    Ok(secs)
}

/// A heap buffer aligned for O_DIRECT (4 KiB).
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let mem = vec![0u8; len + 4096];
        let start = mem.as_ptr().align_offset(4096);
        AlignedBuf { mem, start, len }
    }
    fn as_ref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_wrap_like_qemu() {
        let bp = BenchParams {
            count: 0,
            depth: 1,
            bufsize: 4096,
            step: 8192,
            offset: 4096,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain_on_flush: true,
            direct: false,
        };
        assert_eq!(req_offset(&bp, 1 << 20, 0), 4096);
        assert_eq!(req_offset(&bp, 1 << 20, 1), 12288);
        assert_eq!(req_offset(&bp, 1 << 20, 128), 4096);
    }
}
