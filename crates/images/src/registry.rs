//! Registry pull and push over the OCI distribution API (oci-client).
//!
//! Manifests are fetched raw so the stored bytes are exactly the ones
//! their digest names; platform selection from an index is ours (linux/amd64
//! unless `--platform` says otherwise). Registries on loopback or listed in
//! `FERRO_INSECURE_REGISTRIES` (comma separated) are spoken to over plain HTTP,
//! as Docker does for localhost.

use crate::digest::Digest;
use crate::store::{
    self, Descriptor, Store, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::{Error, Result};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::io::Write;

/// Credentials for a registry.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Auth {
    fn to_oci(&self) -> RegistryAuth {
        match self {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
            Auth::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

pub fn default_platform() -> PlatformSpec {
    PlatformSpec {
        os: "linux".into(),
        arch: "amd64".into(),
        variant: None,
    }
}

pub fn parse_platform(s: &str) -> Result<PlatformSpec> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(PlatformSpec {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: None,
        }),
        [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(PlatformSpec {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: Some(v.to_string()),
        }),
        _ => Err(Error::Invalid(format!(
            "invalid platform {s:?}: expected os/arch[/variant]"
        ))),
    }
}

/// Picks the index entry for `want`.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &PlatformSpec,
) -> Option<&'a Descriptor> {
    entries.iter().find(|e| {
        e.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.arch
                && (want.variant.is_none() || p.variant == want.variant)
        })
    })
}

fn insecure(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    host == "localhost"
        || host.starts_with("127.")
        || host == "[::1]"
        || std::env::var("FERRO_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .any(|r| r == registry)
}

fn client_for(reference: &Reference) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if insecure(reference.registry()) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        ..Default::default()
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the I/O runtime: {e}")))
}

fn reg_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

fn parse_ref(name: &str) -> Result<Reference> {
    name.parse::<Reference>()
        .map_err(|e| Error::Invalid(format!("invalid image reference {name:?}: {e}")))
}

/// Pulls `name` into the store and tags it; returns the manifest digest.
pub fn pull(
    store: &Store,
    name: &str,
    platform: &PlatformSpec,
    auth: &Auth,
    progress: bool,
) -> Result<Digest> {
    let reference = parse_ref(name)?;
    let client = client_for(&reference);
    let auth = auth.to_oci();
    let rt = runtime()?;
    rt.block_on(async {
        let accept = [
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
        ];
        let (bytes, _) = client
            .pull_manifest_raw(&reference, &auth, &accept)
            .await
            .map_err(|e| reg_err(&format!("pulling manifest of {name}"), e))?;
        let mut bytes = bytes.to_vec();
        if let Some(want) = reference.digest() {
            let want = Digest::parse(want)?;
            if Digest::of(&bytes) != want {
                return Err(Error::DigestMismatch {
                    what: format!("manifest of {name}"),
                    expected: want.to_string(),
                    actual: Digest::of(&bytes).to_string(),
                });
            }
        }
        let probe: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("registry sent a malformed manifest: {e}")))?;
        if probe.get("manifests").is_some() {
            let idx = store::parse_index(&bytes)?;
            let pick = select_platform(&idx.manifests, platform).ok_or_else(|| {
                Error::Invalid(format!(
                    "{name} has no image for platform {}/{}",
                    platform.os, platform.arch
                ))
            })?;
            let d = Digest::parse(&pick.digest)?;
            let r2 = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                d.to_string(),
            );
            let (b2, _) = client
                .pull_manifest_raw(&r2, &auth, &accept)
                .await
                .map_err(|e| reg_err(&format!("pulling {d}"), e))?;
            if Digest::of(&b2) != d {
                return Err(Error::DigestMismatch {
                    what: format!("platform manifest of {name}"),
                    expected: d.to_string(),
                    actual: Digest::of(&b2).to_string(),
                });
            }
            bytes = b2.to_vec();
        }
        let manifest = store::parse_manifest(&bytes)?;
        let bars = indicatif::MultiProgress::new();
        if !progress {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let mut wanted = vec![manifest.config.clone()];
        wanted.extend(manifest.layers.iter().cloned());
        for desc in &wanted {
            let d = Digest::parse(&desc.digest)?;
            let bar = bars.add(indicatif::ProgressBar::new(desc.size));
            bar.set_style(style.clone());
            bar.set_prefix(d.short().to_string());
            if store.has_blob(&d) && store.verify_blob(&d).is_ok() {
                bar.finish_with_message("already exists");
                continue;
            }
            let mut stream = client
                .pull_blob_stream(&reference, desc.digest.as_str())
                .await
                .map_err(|e| reg_err(&format!("pulling blob {d}"), e))?;
            let mut w = store.blob_writer()?;
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| reg_err(&format!("downloading {d}"), e))?;
                if w.bytes + chunk.len() as u64 > desc.size {
                    return Err(Error::Invalid(format!(
                        "blob {d} is larger than its manifest says ({} bytes)",
                        desc.size
                    )));
                }
                w.write(&chunk)?;
                bar.inc(chunk.len() as u64);
            }
            w.commit(&d)?;
            bar.finish_with_message("done");
        }
        let md = store.put_blob(&bytes, None)?;
        let img = store.load_image(&md)?;
        store.layer_dirs(&img)?;
        store.tag(name, &md)?;
        Ok(md)
    })
}

/// Pushes the local image `name` to the registry reference `dest` (default: `name`).
pub fn push(store: &Store, name: &str, dest: Option<&str>, auth: &Auth) -> Result<Digest> {
    let img = store.resolve(name)?;
    let target = dest.unwrap_or(name);
    let reference = parse_ref(target)?;
    let client = client_for(&reference);
    let auth = auth.to_oci();
    let rt = runtime()?;
    rt.block_on(async {
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| reg_err(&format!("authenticating to {}", reference.registry()), e))?;
        let mut blobs = vec![img.id.clone()];
        for l in &img.manifest.layers {
            blobs.push(Digest::parse(&l.digest)?);
        }
        for d in blobs {
            let exists = client
                .blob_exists(&reference, &d.to_string())
                .await
                .unwrap_or(false);
            if exists {
                continue;
            }
            store.verify_blob(&d)?;
            let data = std::fs::read(store.blob_path(&d))
                .map_err(|e| reg_err(&format!("reading blob {d}"), e))?;
            client
                .push_blob(&reference, data, &d.to_string())
                .await
                .map_err(|e| reg_err(&format!("pushing blob {d}"), e))?;
        }
        let mbytes = store.read_blob(&img.manifest_digest)?;
        let mt = img
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| MT_OCI_MANIFEST.to_string());
        let ct = mt
            .parse()
            .map_err(|_| Error::Invalid(format!("bad media type {mt}")))?;
        client
            .push_manifest_raw(&reference, mbytes, ct)
            .await
            .map_err(|e| reg_err(&format!("pushing manifest of {target}"), e))?;
        let _ = std::io::stderr().flush();
        Ok(img.manifest_digest.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn platform_parsing_and_selection() {
        assert!(parse_platform("linux").is_err());
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        let mk = |arch: &str| Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()).to_string(),
            size: 1,
            annotations: None,
            platform: Some(store::Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
        };
        let entries = vec![mk("arm64"), mk("amd64")];
        let got = select_platform(&entries, &default_platform()).unwrap();
        assert_eq!(got.digest, entries[1].digest);
        assert!(select_platform(&entries, &parse_platform("linux/s390x").unwrap()).is_none());
    }
}
