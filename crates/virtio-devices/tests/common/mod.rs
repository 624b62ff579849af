//! Test backends: a raw file disk that records discard/write-zeroes calls,
//! and a gate that can hold a read until the test releases it.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use block::{BlockBackend, Extent, Result};

#[derive(Default)]
pub struct Log {
    pub discards: Vec<(u64, u64)>,
    pub zeroes: Vec<(u64, u64)>,
    pub flushes: u32,
}

/// Holds reads while closed.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    pub entered: Mutex<u32>,
}

impl Gate {
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn pass(&self) {
        *self.entered.lock().unwrap() += 1;
        let mut g = self.open.lock().unwrap();
        while !*g {
            g = self.cv.wait(g).unwrap();
        }
    }
}

pub struct FileDisk {
    pub file: File,
    pub size: u64,
    pub ro: bool,
    pub log: Arc<Mutex<Log>>,
    pub gate: Option<Arc<Gate>>,
}

impl FileDisk {
    pub fn new(file: File, ro: bool) -> Self {
        let size = file.metadata().unwrap().len();
        Self {
            file,
            size,
            ro,
            log: Arc::default(),
            gate: None,
        }
    }
}

fn io(e: std::io::Error) -> block::Error {
    block::Error::Io {
        path: "test".into(),
        source: e,
    }
}

impl BlockBackend for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.ro
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        if let Some(g) = &self.gate {
            g.pass();
        }
        self.file.read_exact_at(buf, offset).map_err(io)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if self.ro {
            return Err(block::Error::ReadOnly);
        }
        self.file.write_all_at(buf, offset).map_err(io)
    }
    fn flush(&mut self) -> Result<()> {
        self.log.lock().unwrap().flushes += 1;
        self.file.sync_data().map_err(io)
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.log.lock().unwrap().discards.push((offset, len));
        self.write_zeroes_inner(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.log.lock().unwrap().zeroes.push((offset, len));
        self.write_zeroes_inner(offset, len)
    }
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset,
            length: len,
            data: true,
            zero: false,
            present: true,
            depth: 0,
            host_offset: Some(offset),
        }])
    }
}

impl FileDisk {
    fn write_zeroes_inner(&mut self, offset: u64, len: u64) -> Result<()> {
        let z = vec![0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(4096) as usize;
            self.file.write_all_at(&z[..n], offset + done).map_err(io)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A temp file of `size` bytes filled with a recognizable pattern.
pub fn patterned_file(size: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 512) as u8).collect();
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().write_all_at(&data, 0).unwrap();
    (f, data)
}
