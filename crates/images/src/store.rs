//! The on-disk image store: an OCI image layout (`oci/`), unpacked layers
//! (`layers/<diff-id hex>/`) and a scratch area (`tmp/`) on the same
//! filesystem so finished work lands with an atomic rename.
//!
//! Tags live in `oci/index.json` as the `org.opencontainers.image.ref.name`
//! annotation holding the full reference (`registry/repo:tag`).

use crate::digest::{Digest, HashingReader};
use crate::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifests and configs are small; refuse anything absurd before reading it.
pub const MAX_JSON_BLOB: u64 = 8 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The runtime part of an image config (`config` in the image JSON).
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An image configuration; unknown fields survive a round trip.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn check_descriptor(d: &Descriptor, what: &str) -> Result<()> {
    Digest::parse(&d.digest)
        .map_err(|_| Error::Invalid(format!("{what} has an invalid digest {:?}", d.digest)))?;
    Ok(())
}

/// Parses and validates an image manifest.
pub fn parse_manifest(data: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(data)
        .map_err(|e| Error::Invalid(format!("malformed image manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(Error::Invalid(format!(
            "unsupported manifest schemaVersion {}",
            m.schema_version
        )));
    }
    if let Some(mt) = &m.media_type {
        if mt != MT_OCI_MANIFEST && mt != MT_DOCKER_MANIFEST {
            return Err(Error::Invalid(format!("not an image manifest: {mt}")));
        }
    }
    check_descriptor(&m.config, "manifest config")?;
    for l in &m.layers {
        check_descriptor(l, "manifest layer")?;
    }
    Ok(m)
}

/// Parses and validates an image index (or docker manifest list).
pub fn parse_index(data: &[u8]) -> Result<Index> {
    let i: Index = serde_json::from_slice(data)
        .map_err(|e| Error::Invalid(format!("malformed image index: {e}")))?;
    if i.schema_version != 2 {
        return Err(Error::Invalid(format!(
            "unsupported index schemaVersion {}",
            i.schema_version
        )));
    }
    for m in &i.manifests {
        check_descriptor(m, "index entry")?;
    }
    Ok(i)
}

/// Parses and validates an image config.
pub fn parse_config(data: &[u8]) -> Result<ImageConfig> {
    let c: ImageConfig = serde_json::from_slice(data)
        .map_err(|e| Error::Invalid(format!("malformed image config: {e}")))?;
    for d in &c.rootfs.diff_ids {
        Digest::parse(d)
            .map_err(|_| Error::Invalid(format!("image config has an invalid diff_id {d:?}")))?;
    }
    Ok(c)
}

/// One tagged image as `images` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageRecord {
    pub name: String,
    pub manifest: Digest,
    pub id: Digest,
    pub created: Option<String>,
    pub size: u64,
}

/// A resolved image: its manifest and config.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub id: Digest,
    pub config: ImageConfig,
}

pub struct Store {
    base: PathBuf,
}

/// Holds the store's lock while alive.
pub struct Lock(fs::File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by self.0 and valid.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    pub fn open(base: &Path) -> Result<Store> {
        let s = Store {
            base: base.to_path_buf(),
        };
        for d in ["oci/blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(base.join(d))
                .ctx(|| format!("creating {}", base.join(d).display()))?;
        }
        let layout = base.join("oci/oci-layout");
        if !layout.exists() {
            fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .ctx(|| format!("writing {}", layout.display()))?;
        }
        if !base.join("oci/index.json").exists() {
            s.write_index(&Index {
                schema_version: 2,
                media_type: Some(MT_OCI_INDEX.into()),
                manifests: vec![],
            })?;
        }
        Ok(s)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn layout_dir(&self) -> PathBuf {
        self.base.join("oci")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.base.join("tmp")
    }

    pub fn lock(&self) -> Result<Lock> {
        let p = self.base.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening {}", p.display()))?;
        // SAFETY: valid fd owned by f.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Io {
                context: "locking the image store".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Lock(f))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.base.join("oci/blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Streams `r` into the store; fails (writing nothing) unless the
    /// content hashes to `expected` when one is given.
    pub fn put_blob_reader<R: Read>(
        &self,
        r: R,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .ctx(|| "creating a temporary blob".into())?;
        let mut hr = HashingReader::new(r);
        io::copy(&mut hr, tmp.as_file_mut()).ctx(|| "writing blob".into())?;
        let (d, n) = hr.finish();
        if let Some(e) = expected {
            if *e != d {
                return Err(Error::DigestMismatch {
                    what: "blob".into(),
                    expected: e.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        tmp.as_file().sync_all().ctx(|| "syncing blob".into())?;
        tmp.persist(self.blob_path(&d)).map_err(|e| Error::Io {
            context: "storing blob".into(),
            source: e.error,
        })?;
        Ok((d, n))
    }

    /// Starts writing a blob chunk by chunk (for network streams).
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        Ok(BlobWriter {
            store: self,
            tmp: tempfile::NamedTempFile::new_in(self.tmp_dir())
                .ctx(|| "creating a temporary blob".into())?,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            bytes: 0,
        })
    }

    /// Stores a manifest for `config` + `layers`; returns its digest and size.
    pub fn write_manifest(
        &self,
        config: Descriptor,
        layers: Vec<Descriptor>,
    ) -> Result<(Digest, u64)> {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config,
            layers,
            annotations: None,
        };
        let mb = serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok((self.put_blob(&mb, None)?, mb.len() as u64))
    }

    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        Ok(self.put_blob_reader(data, expected)?.0)
    }

    /// Checks a stored blob against its name.
    pub fn verify_blob(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        let f = fs::File::open(&p).ctx(|| format!("blob {d} is missing from the store"))?;
        let mut hr = HashingReader::new(f);
        io::copy(&mut hr, &mut io::sink()).ctx(|| format!("reading blob {d}"))?;
        let (actual, n) = hr.finish();
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", p.display()),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(n)
    }

    /// Reads a small (JSON) blob, verifying its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let f = fs::File::open(&p).ctx(|| format!("blob {d} is missing from the store"))?;
        let len = f.metadata().ctx(|| format!("stat {}", p.display()))?.len();
        if len > MAX_JSON_BLOB {
            return Err(Error::Invalid(format!(
                "blob {d} is too large ({len} bytes) for JSON"
            )));
        }
        let mut v = Vec::with_capacity(len as usize);
        f.take(MAX_JSON_BLOB)
            .read_to_end(&mut v)
            .ctx(|| format!("reading blob {d}"))?;
        let actual = Digest::of(&v);
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", p.display()),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(v)
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.base.join("oci/index.json");
        let data = fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
        parse_index(&data)
    }

    pub fn write_index(&self, idx: &Index) -> Result<()> {
        let p = self.base.join("oci/index.json");
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .ctx(|| "creating temporary index".into())?;
        let data = serde_json::to_vec_pretty(idx).map_err(|e| Error::Invalid(e.to_string()))?;
        tmp.write_all(&data).ctx(|| "writing index".into())?;
        tmp.persist(&p).map_err(|e| Error::Io {
            context: format!("replacing {}", p.display()),
            source: e.error,
        })?;
        Ok(())
    }

    pub fn load_image(&self, manifest_digest: &Digest) -> Result<Image> {
        let manifest = parse_manifest(&self.read_blob(manifest_digest)?)?;
        let id = Digest::parse(&manifest.config.digest)?;
        let config = parse_config(&self.read_blob(&id)?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Invalid(format!(
                "image {manifest_digest}: {} layers but {} diff_ids in its config",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        Ok(Image {
            manifest_digest: manifest_digest.clone(),
            manifest,
            id,
            config,
        })
    }

    /// Lists tagged images (and untagged ones as `<none>`).
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for m in self.index()?.manifests {
            let name = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_ANNOTATION))
                .cloned()
                .unwrap_or_else(|| "<none>:<none>".into());
            let md = Digest::parse(&m.digest)?;
            let img = self.load_image(&md)?;
            let size =
                img.manifest.layers.iter().map(|l| l.size).sum::<u64>() + img.manifest.config.size;
            out.push(ImageRecord {
                name,
                manifest: md,
                id: img.id,
                created: img.config.created.clone(),
                size,
            });
        }
        Ok(out)
    }

    /// Finds an image by name (`repo[:tag]`), image ID (prefix) or manifest digest.
    pub fn resolve(&self, what: &str) -> Result<Image> {
        let list = self.list()?;
        let full = crate::reference::normalize(what);
        if let Some(r) = list.iter().find(|r| r.name == what || r.name == full) {
            return self.load_image(&r.manifest);
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = list
                .iter()
                .filter(|r| r.id.hex().starts_with(hex) || r.manifest.hex().starts_with(hex))
                .collect();
            if let Some(first) = hits.first() {
                if hits.iter().all(|h| h.manifest == first.manifest) {
                    return self.load_image(&first.manifest);
                }
                return Err(Error::Invalid(format!("ambiguous image ID prefix {what}")));
            }
        }
        Err(Error::NoSuchImage(what.to_string()))
    }

    /// Points `name` at a stored manifest (replacing whatever it named).
    pub fn tag(&self, name: &str, manifest: &Digest) -> Result<()> {
        let _l = self.lock()?;
        let name = crate::reference::normalize(name);
        let size = fs::metadata(self.blob_path(manifest))
            .ctx(|| format!("manifest {manifest} is not in the store"))?
            .len();
        let mut idx = self.index()?;
        idx.manifests
            .retain(|m| m.annotations.as_ref().and_then(|a| a.get(REF_ANNOTATION)) != Some(&name));
        // Drop an untagged entry for the same manifest: it now has a name.
        idx.manifests
            .retain(|m| !(m.digest == manifest.to_string() && m.annotations.is_none()));
        let mut ann = BTreeMap::new();
        ann.insert(REF_ANNOTATION.to_string(), name);
        idx.manifests.push(Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: manifest.to_string(),
            size,
            annotations: Some(ann),
            platform: None,
        });
        self.write_index(&idx)
    }

    /// Removes a name (or every name of an image given by ID); returns the
    /// removed names. Blobs and layers nothing references any more go too.
    pub fn remove(&self, what: &str) -> Result<Vec<String>> {
        let img = self.resolve(what)?;
        let full = crate::reference::normalize(what);
        let _l = self.lock()?;
        let mut idx = self.index()?;
        let mut removed = Vec::new();
        let by_name = idx.manifests.iter().any(|m| {
            let n = m.annotations.as_ref().and_then(|a| a.get(REF_ANNOTATION));
            n == Some(&full) || n.map(String::as_str) == Some(what)
        });
        idx.manifests.retain(|m| {
            let n = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_ANNOTATION))
                .cloned();
            let hit = if by_name {
                n.as_deref() == Some(full.as_str()) || n.as_deref() == Some(what)
            } else {
                m.digest == img.manifest_digest.to_string()
            };
            if hit {
                removed.push(n.unwrap_or_else(|| m.digest.clone()));
            }
            !hit
        });
        self.write_index(&idx)?;
        self.gc_locked(&idx)?;
        Ok(removed)
    }

    /// Deletes blobs and unpacked layers that no indexed image references.
    fn gc_locked(&self, idx: &Index) -> Result<()> {
        let mut keep_blobs = HashSet::new();
        let mut keep_layers = HashSet::new();
        for m in &idx.manifests {
            let md = Digest::parse(&m.digest)?;
            keep_blobs.insert(md.hex().to_string());
            if let Ok(img) = self.load_image(&md) {
                keep_blobs.insert(img.id.hex().to_string());
                for l in &img.manifest.layers {
                    if let Ok(d) = Digest::parse(&l.digest) {
                        keep_blobs.insert(d.hex().to_string());
                    }
                }
                for d in &img.config.rootfs.diff_ids {
                    if let Ok(d) = Digest::parse(d) {
                        keep_layers.insert(d.hex().to_string());
                    }
                }
            }
        }
        // Build-cache entries keep their layers alive too.
        for extra in self.pinned_blobs() {
            keep_blobs.insert(extra);
        }
        for (dir, keep) in [("oci/blobs/sha256", &keep_blobs), ("layers", &keep_layers)] {
            let p = self.base.join(dir);
            for e in fs::read_dir(&p)
                .ctx(|| format!("listing {}", p.display()))?
                .flatten()
            {
                let n = e.file_name().to_string_lossy().into_owned();
                if dir == "layers" && keep_blobs.contains(&n) {
                    continue;
                }
                if !keep.contains(&n) {
                    let path = e.path();
                    if path.is_dir() {
                        let _ = fs::remove_dir_all(&path);
                    } else {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Blob hexes that must survive GC (listed one per line in `pinned`).
    fn pinned_blobs(&self) -> Vec<String> {
        fs::read_to_string(self.base.join("pinned"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn pin_blobs(&self, hexes: &[String]) -> Result<()> {
        let p = self.base.join("pinned");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .ctx(|| format!("opening {}", p.display()))?;
        for h in hexes {
            writeln!(f, "{h}").ctx(|| "writing pins".into())?;
        }
        Ok(())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.base.join("layers").join(diff_id.hex())
    }

    /// Returns the unpacked directories of the image's layers, bottom first,
    /// unpacking (and verifying) any that are missing.
    pub fn layer_dirs(&self, img: &Image) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for (desc, diff) in img.manifest.layers.iter().zip(&img.config.rootfs.diff_ids) {
            let diff = Digest::parse(diff)?;
            let dir = self.layer_dir(&diff);
            if !dir.exists() {
                let blob = Digest::parse(&desc.digest)?;
                self.unpack_layer(&blob, &diff)?;
            }
            out.push(dir);
        }
        Ok(out)
    }

    /// Unpacks one stored layer blob into `layers/<diff_id>`.
    pub fn unpack_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<()> {
        self.verify_blob(blob)?;
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.tmp_dir())
            .ctx(|| "creating an unpack directory".into())?;
        let root = tmp.path().join("root");
        fs::create_dir(&root).ctx(|| "creating layer root".into())?;
        let f = fs::File::open(self.blob_path(blob)).ctx(|| format!("opening layer {blob}"))?;
        let mut hr = HashingReader::new(crate::unpack::decompress(f)?);
        crate::unpack::unpack(&mut hr, &root)
            .map_err(|e| Error::Invalid(format!("layer {blob}: {e}")))?;
        io::copy(&mut hr, &mut io::sink()).ctx(|| format!("reading layer {blob}"))?;
        let (actual, _) = hr.finish();
        if actual != *diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {blob} (diff_id)"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let dest = self.layer_dir(diff_id);
        match fs::rename(&root, &dest) {
            Ok(()) => Ok(()),
            // Another process finished the same layer first.
            Err(_) if dest.exists() => Ok(()),
            Err(e) => Err(Error::Io {
                context: format!("storing layer {}", dest.display()),
                source: e,
            }),
        }
    }

    /// Stores a config and manifest for `layers` (blob descriptors) and
    /// optionally tags it; returns the manifest digest.
    pub fn commit(
        &self,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
        name: Option<&str>,
    ) -> Result<Digest> {
        let cfg = serde_json::to_vec(config).map_err(|e| Error::Invalid(e.to_string()))?;
        let cd = self.put_blob(&cfg, None)?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: MT_OCI_CONFIG.into(),
                digest: cd.to_string(),
                size: cfg.len() as u64,
                annotations: None,
                platform: None,
            },
            layers,
            annotations: None,
        };
        let mb = serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))?;
        let md = self.put_blob(&mb, None)?;
        match name {
            Some(n) => self.tag(n, &md)?,
            None => self.add_untagged(&md, mb.len() as u64)?,
        }
        Ok(md)
    }

    pub fn add_untagged(&self, md: &Digest, size: u64) -> Result<()> {
        let _l = self.lock()?;
        let mut idx = self.index()?;
        if !idx.manifests.iter().any(|m| m.digest == md.to_string()) {
            idx.manifests.push(Descriptor {
                media_type: MT_OCI_MANIFEST.into(),
                digest: md.to_string(),
                size,
                annotations: None,
                platform: None,
            });
        }
        self.write_index(&idx)
    }
}

/// A blob being written; `commit` verifies and stores it.
pub struct BlobWriter<'a> {
    store: &'a Store,
    tmp: tempfile::NamedTempFile,
    hasher: sha2::Sha256,
    pub bytes: u64,
}

impl BlobWriter<'_> {
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        sha2::Digest::update(&mut self.hasher, data);
        self.bytes += data.len() as u64;
        self.tmp.write_all(data).ctx(|| "writing blob".into())
    }

    pub fn commit(self, expected: &Digest) -> Result<u64> {
        let d = Digest::from_hasher(self.hasher);
        if d != *expected {
            return Err(Error::DigestMismatch {
                what: "downloaded blob".into(),
                expected: expected.to_string(),
                actual: d.to_string(),
            });
        }
        self.tmp
            .as_file()
            .sync_all()
            .ctx(|| "syncing blob".into())?;
        self.tmp
            .persist(self.store.blob_path(&d))
            .map_err(|e| Error::Io {
                context: "storing blob".into(),
                source: e.error,
            })?;
        Ok(self.bytes)
    }
}

/// Current UTC time in RFC 3339 (seconds), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`rfc3339`]: `YYYY-MM-DDTHH:MM:SSZ` → Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let n = |a: usize, l: usize| s.get(a..a + l)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 2)?, n(8, 2)?);
    let (hh, mm, ss) = (n(11, 2)?, n(14, 2)?, n(17, 2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn rfc3339_round_trips() {
        for t in [0u64, 1_700_000_000, 1_800_000_123] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339(""), None);
    }

    #[test]
    fn corrupt_blob_is_refused_on_write_and_read() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let want = Digest::of(b"good");
        let e = s.put_blob(b"evil", Some(&want)).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(!s.has_blob(&want));
        let d = s.put_blob(b"{}", None).unwrap();
        fs::write(s.blob_path(&d), b"{\"x\":1}").unwrap();
        let e = s.read_blob(&d).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
    }

    #[test]
    fn parsers_reject_bad_digests() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../x","size":1},"layers":[]}"#;
        assert!(parse_manifest(m).is_err());
        let c = br#"{"rootfs":{"type":"layers","diff_ids":["nope"]}}"#;
        assert!(parse_config(c).is_err());
        assert!(parse_index(b"[]").is_err());
    }
}
