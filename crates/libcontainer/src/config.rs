//! Reading and validating a bundle's config.json. Validation happens before
//! anything is created on the host, so a bad bundle leaves no trace.

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Largest config.json accepted (runc has no limit; ours bounds memory use).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Parses config.json text and checks it (no filesystem access).
pub fn parse(text: &[u8]) -> Result<Spec> {
    let spec: Spec =
        serde_json::from_slice(text).context("config.json is not a valid OCI runtime spec")?;
    validate(&spec)?;
    Ok(spec)
}

/// Loads `<bundle>/config.json`, validates it and checks the rootfs exists.
/// Returns the spec with `root.path` made absolute.
pub fn load(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    let meta = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        bail!(
            "{} is {} bytes, larger than the {} byte limit",
            p.display(),
            meta.len(),
            MAX_CONFIG_BYTES
        );
    }
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut spec = parse(&text).with_context(|| format!("in {}", p.display()))?;
    let root = rootfs_path(&spec, bundle)?;
    let md = std::fs::metadata(&root)
        .with_context(|| format!("rootfs {} (root.path in config.json)", root.display()))?;
    if !md.is_dir() {
        bail!("rootfs {} is not a directory", root.display());
    }
    if let Some(r) = spec.root_mut() {
        r.set_path(root);
    }
    Ok(spec)
}

pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let r = spec.root().as_ref().context("config.json has no root")?;
    Ok(if r.path().is_absolute() {
        r.path().clone()
    } else {
        bundle.join(r.path())
    })
}

/// Structural checks the spec requires of a Linux config.
pub fn validate(spec: &Spec) -> Result<()> {
    let v = spec.version();
    if !v.starts_with("1.") {
        bail!("unsupported ociVersion {v:?} (need 1.x)");
    }
    let root = spec.root().as_ref().context("config.json has no root")?;
    if root.path().as_os_str().is_empty() {
        bail!("root.path is empty");
    }
    if let Some(p) = spec.process() {
        let args = p.args().as_deref().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            bail!("process.args must name the program to run");
        }
        if !p.cwd().is_absolute() {
            bail!("process.cwd {:?} must be an absolute path", p.cwd());
        }
        for e in p.env().iter().flatten() {
            if !e.contains('=') {
                bail!("process.env entry {e:?} is not KEY=VALUE");
            }
        }
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            bail!("mount destination {:?} must be absolute", m.destination());
        }
    }
    let linux = spec
        .linux()
        .as_ref()
        .context("config.json has no linux section")?;
    libcgroups::cgroup_path(linux.cgroups_path().as_deref(), "x")?;
    let mut seen = HashSet::new();
    let mut has_user = false;
    let mut user_joined = false;
    let mut pid_new = false;
    for ns in linux.namespaces().iter().flatten() {
        if !seen.insert(ns.typ()) {
            bail!("namespace {} is listed twice", ns.typ());
        }
        if ns.typ() == LinuxNamespaceType::Time {
            bail!("time namespaces are not supported");
        }
        if ns.typ() == LinuxNamespaceType::User {
            has_user = true;
            user_joined = ns.path().is_some();
        }
        if ns.typ() == LinuxNamespaceType::Pid && ns.path().is_none() {
            pid_new = true;
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                bail!("namespace {} path {:?} must be absolute", ns.typ(), p);
            }
        }
    }
    if user_joined && pid_new {
        bail!("joining a user namespace while creating a new pid namespace is not supported");
    }
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if maps && !has_user {
        bail!("uidMappings/gidMappings need a user namespace");
    }
    if has_user && !user_joined && !maps {
        bail!("a new user namespace needs uidMappings and gidMappings");
    }
    if let Some(h) = spec.hostname() {
        if !h.is_empty() && !seen.contains(&LinuxNamespaceType::Uts) {
            bail!("hostname needs a new uts namespace");
        }
    }
    for p in linux
        .masked_paths()
        .iter()
        .flatten()
        .chain(linux.readonly_paths().iter().flatten())
    {
        if !p.starts_with('/') {
            bail!("masked/readonly path {p:?} must be absolute");
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        if crate::rootfs::propagation_flag(prop).is_none() {
            bail!("rootfsPropagation {prop:?} is not one of shared, slave, private, unbindable (r-prefixed too)");
        }
    }
    if let Some(sc) = linux.seccomp() {
        crate::seccomp::validate(sc)?;
    }
    Ok(())
}

/// Checks a container id the way runc does (it becomes a directory name).
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 1024
        || id == "."
        || id == ".."
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
    {
        bail!("invalid container id {id:?}: use letters, digits, '_', '+', '-', '.'");
    }
    Ok(())
}
