//! Raw images: the file is the disk.

/// An open raw file.
pub struct Raw {}
