//! `load` and `save`: docker-archive tarballs (`manifest.json` + config +
//! layer tars) and OCI layout tarballs (`oci-layout`, `index.json`,
//! `blobs/`). `save` writes both at once, as Docker 25+ does, so either
//! kind of loader accepts it.

use crate::digest::Digest;
use crate::store::{
    self, Descriptor, Store, MT_DOCKER_LIST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP, REF_ANNOTATION,
};
use crate::unpack::sanitize;
use crate::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Serialize, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Files of an extracted archive; symlinks are resolved by name, never on disk.
struct Extracted {
    dir: tempfile::TempDir,
    links: HashMap<PathBuf, PathBuf>,
}

impl Extracted {
    fn resolve(&self, name: &str) -> Result<PathBuf> {
        let mut rel = sanitize(Path::new(name))?;
        for _ in 0..16 {
            match self.links.get(&rel) {
                Some(t) => rel = t.clone(),
                None => {
                    let p = self.dir.path().join(&rel);
                    if fs::symlink_metadata(&p)
                        .map(|m| m.is_file())
                        .unwrap_or(false)
                    {
                        return Ok(p);
                    }
                    return Err(Error::Invalid(format!("archive has no file {name:?}")));
                }
            }
        }
        Err(Error::Invalid(format!("archive symlink loop at {name:?}")))
    }
}

fn extract<R: Read>(store: &Store, r: R) -> Result<Extracted> {
    let dir = tempfile::Builder::new()
        .prefix("load-")
        .tempdir_in(store.tmp_dir())
        .ctx(|| "creating a load directory".into())?;
    let mut links = HashMap::new();
    let mut ar = tar::Archive::new(crate::unpack::decompress(r)?);
    for e in ar.entries().ctx(|| "reading archive".into())? {
        let mut e = e.ctx(|| "reading archive entry".into())?;
        let raw = e
            .path()
            .ctx(|| "reading archive entry name".into())?
            .into_owned();
        let rel = sanitize(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let p = dir.path().join(&rel);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .ctx(|| format!("archive entry {}", raw.display()))?;
                io::copy(&mut e, &mut f).ctx(|| format!("extracting {}", raw.display()))?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let t = e
                    .link_name()
                    .ctx(|| "reading link".into())?
                    .ok_or_else(|| Error::Invalid(format!("link {} has no target", raw.display())))?
                    .into_owned();
                // Docker's legacy format links `x/layer.tar -> ../y/layer.tar`.
                let base = if e.header().entry_type() == tar::EntryType::Symlink {
                    rel.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                let mut joined = PathBuf::new();
                for c in base.join(&t).components() {
                    match c {
                        std::path::Component::ParentDir if !joined.pop() => {
                            return Err(Error::UnsafeEntry {
                                path: raw.display().to_string(),
                                reason: "link escapes the archive".into(),
                            });
                        }
                        std::path::Component::Normal(n) => joined.push(n),
                        _ => {}
                    }
                }
                links.insert(rel, joined);
            }
            _ => {}
        }
    }
    Ok(Extracted { dir, links })
}

fn is_gzip(p: &Path) -> bool {
    let mut b = [0u8; 2];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut b))
        .map(|_| b == [0x1f, 0x8b])
        .unwrap_or(false)
}

/// Loads every image of an archive; returns the names (or IDs) loaded.
pub fn load<R: Read>(store: &Store, r: R) -> Result<Vec<String>> {
    let ex = extract(store, r)?;
    if let Ok(mpath) = ex.resolve("manifest.json") {
        let data = fs::read(&mpath).ctx(|| "reading manifest.json".into())?;
        let entries: Vec<DockerEntry> = serde_json::from_slice(&data)
            .map_err(|e| Error::Invalid(format!("malformed manifest.json: {e}")))?;
        let mut out = Vec::new();
        for ent in entries {
            out.extend(load_docker_entry(store, &ex, &ent)?);
        }
        return Ok(out);
    }
    if ex.resolve("index.json").is_ok() {
        return load_oci(store, &ex);
    }
    Err(Error::Invalid(
        "not an image archive: no manifest.json (docker) or index.json (OCI)".into(),
    ))
}

fn load_docker_entry(store: &Store, ex: &Extracted, ent: &DockerEntry) -> Result<Vec<String>> {
    let cpath = ex.resolve(&ent.config)?;
    let cbytes = fs::read(&cpath).ctx(|| format!("reading {}", ent.config))?;
    let config = store::parse_config(&cbytes)?;
    if config.rootfs.diff_ids.len() != ent.layers.len() {
        return Err(Error::Invalid(format!(
            "{}: {} layers but {} diff_ids",
            ent.config,
            ent.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    // The config may be named by its digest (blobs/sha256/<hex> or <hex>.json).
    let cd = store.put_blob(&cbytes, None)?;
    let mut layers = Vec::new();
    for (l, diff) in ent.layers.iter().zip(&config.rootfs.diff_ids) {
        let p = ex.resolve(l)?;
        let gz = is_gzip(&p);
        let f = fs::File::open(&p).ctx(|| format!("opening layer {l}"))?;
        let (d, size) = store.put_blob_reader(f, None)?;
        if !gz && d.to_string() != *diff {
            return Err(Error::DigestMismatch {
                what: format!("layer {l}"),
                expected: diff.clone(),
                actual: d.to_string(),
            });
        }
        layers.push(Descriptor {
            media_type: if gz { MT_OCI_LAYER_GZIP } else { MT_OCI_LAYER }.into(),
            digest: d.to_string(),
            size,
            annotations: None,
            platform: None,
        });
    }
    let (md, msize) = store.write_manifest(
        Descriptor {
            media_type: MT_OCI_CONFIG.into(),
            digest: cd.to_string(),
            size: cbytes.len() as u64,
            annotations: None,
            platform: None,
        },
        layers,
    )?;
    let img = store.load_image(&md)?;
    store.layer_dirs(&img)?; // verifies every layer now, not at first run
    let tags = ent.repo_tags.clone().unwrap_or_default();
    if tags.is_empty() {
        store.add_untagged(&md, msize)?;
        return Ok(vec![cd.to_string()]);
    }
    for t in &tags {
        store.tag(t, &md)?;
    }
    Ok(tags)
}

fn load_oci(store: &Store, ex: &Extracted) -> Result<Vec<String>> {
    let blobs = ex.dir.path().join("blobs/sha256");
    if let Ok(rd) = fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            let d = Digest::parse(&name)?;
            let f = fs::File::open(e.path()).ctx(|| format!("opening {name}"))?;
            store.put_blob_reader(f, Some(&d))?;
        }
    }
    let idx = store::parse_index(
        &fs::read(ex.resolve("index.json")?).ctx(|| "reading index.json".into())?,
    )?;
    let mut out = Vec::new();
    for m in idx.manifests {
        let mut md = Digest::parse(&m.digest)?;
        if m.media_type == MT_OCI_INDEX || m.media_type == MT_DOCKER_LIST {
            let nested = store::parse_index(&store.read_blob(&md)?)?;
            let pick = crate::registry::select_platform(
                &nested.manifests,
                &crate::registry::default_platform(),
            )
            .ok_or_else(|| Error::Invalid(format!("index {md} has no linux/amd64 image")))?;
            md = Digest::parse(&pick.digest)?;
        }
        let img = store.load_image(&md)?;
        store.layer_dirs(&img)?;
        let ann = m.annotations.unwrap_or_default();
        let name = ann
            .get(CONTAINERD_NAME)
            .or_else(|| {
                ann.get(REF_ANNOTATION)
                    .filter(|n| n.contains(':') || n.contains('/'))
            })
            .cloned();
        match name {
            Some(n) => {
                store.tag(&n, &md)?;
                out.push(n);
            }
            None => {
                let size = fs::metadata(store.blob_path(&md))
                    .map(|m| m.len())
                    .unwrap_or(0);
                store.add_untagged(&md, size)?;
                out.push(img.id.to_string());
            }
        }
    }
    Ok(out)
}

fn add_file<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
        .ctx(|| format!("writing {name}"))
}

/// Writes `names` as one tarball that is both an OCI layout and a docker-archive.
pub fn save<W: Write>(store: &Store, names: &[String], out: W) -> Result<W> {
    let mut b = tar::Builder::new(out);
    let mut blobs = BTreeMap::new();
    let mut index = Vec::new();
    let mut docker = Vec::new();
    for n in names {
        let img = store.resolve(n)?;
        let full = crate::reference::normalize(n);
        let tagged = store.list()?.iter().any(|r| r.name == full);
        blobs.insert(img.manifest_digest.clone(), ());
        blobs.insert(img.id.clone(), ());
        let mut layers = Vec::new();
        for l in &img.manifest.layers {
            let d = Digest::parse(&l.digest)?;
            layers.push(format!("blobs/sha256/{}", d.hex()));
            blobs.insert(d, ());
        }
        let mut ann = BTreeMap::new();
        if tagged {
            ann.insert(REF_ANNOTATION.to_string(), full.clone());
            ann.insert(CONTAINERD_NAME.to_string(), full.clone());
        }
        index.push(Descriptor {
            media_type: store::MT_OCI_MANIFEST.into(),
            digest: img.manifest_digest.to_string(),
            size: fs::metadata(store.blob_path(&img.manifest_digest))
                .map(|m| m.len())
                .unwrap_or(0),
            annotations: if ann.is_empty() { None } else { Some(ann) },
            platform: None,
        });
        docker.push(DockerEntry {
            config: format!("blobs/sha256/{}", img.id.hex()),
            repo_tags: if tagged { Some(vec![full]) } else { None },
            layers,
        });
    }
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for d in blobs.keys() {
        store.verify_blob(d)?;
        let p = store.blob_path(d);
        let mut f = fs::File::open(&p).ctx(|| format!("opening {}", p.display()))?;
        b.append_file(format!("blobs/sha256/{}", d.hex()), &mut f)
            .ctx(|| format!("writing blob {d}"))?;
    }
    let idx = store::Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: index,
    };
    add_file(
        &mut b,
        "index.json",
        &serde_json::to_vec(&idx).map_err(|e| Error::Invalid(e.to_string()))?,
    )?;
    add_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&docker).map_err(|e| Error::Invalid(e.to_string()))?,
    )?;
    b.into_inner().ctx(|| "finishing archive".into())
}
