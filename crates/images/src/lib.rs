//! Content-addressed OCI image store for the container engine.
//!
//! Owns everything about images on disk: an OCI image layout (`blobs/sha256`,
//! `index.json`) whose blobs are verified against their digest when written
//! and when read, layers unpacked into per-layer directories (whiteouts
//! turned into overlayfs whiteouts), overlayfs mounts of those layers, and
//! moving images in and out (registry pull/push, docker-archive and OCI
//! tarballs).
//!
//! Dependencies and why:
//! - `oci-client`: the maintained ORAS registry client (token/basic auth,
//!   digest-checked blob streams) so we don't hand-roll the distribution API.
//! - `rustls` (ring provider): TLS for oci-client without aws-lc's C build.
//! - `tokio`/`futures-util`: oci-client is async; we drive it on a small runtime.
//! - `tar`, `flate2`, `zstd`: layer and archive formats.
//! - `sha2`/`hex`: content addressing.

pub mod archive;
pub mod diff;
pub mod digest;
pub mod mount;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use store::{ImageRecord, Store};

/// Errors the image store reports; every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("unsafe layer entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
