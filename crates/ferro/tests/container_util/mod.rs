//! Test images for the container tests, built from Debian's busybox-static:
//! raw layers (hostile entries too), OCI layout and docker-archive tarballs.
#![allow(dead_code)]

use images::Digest;
use serde_json::json;
use std::io::Write;
use std::process::Command;

pub enum E<'a> {
    Dir,
    File(&'a [u8]),
    Sym(&'a str),
    /// Hardlink; name and target written raw (may be hostile).
    Hard(&'a str),
}

pub fn raw_header(name: &str, kind: tar::EntryType, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    let l = link.as_bytes();
    h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    h.set_cksum();
    h
}

pub fn layer(entries: &[(&str, E)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, e) in entries {
        match e {
            E::Dir => b.append(&raw_header(name, tar::EntryType::Directory, 0, ""), &[][..]),
            E::File(d) => b.append(
                &raw_header(name, tar::EntryType::Regular, d.len() as u64, ""),
                *d,
            ),
            E::Sym(t) => b.append(&raw_header(name, tar::EntryType::Symlink, 0, t), &[][..]),
            E::Hard(t) => b.append(&raw_header(name, tar::EntryType::Link, 0, t), &[][..]),
        }
        .unwrap();
    }
    b.into_inner().unwrap()
}

pub fn busybox_layer() -> Vec<u8> {
    let bb =
        std::fs::read("/bin/busybox").expect("busybox-static is installed (scripts/deps test)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
        .map(|a| format!("bin/{a}"))
        .collect();
    let mut e: Vec<(&str, E)> = vec![("bin", E::Dir), ("bin/busybox", E::File(&bb))];
    for a in &applets {
        e.push((a.as_str(), E::Sym("/bin/busybox")));
    }
    e.extend([
        ("etc", E::Dir),
        (
            "etc/passwd",
            E::File(b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"),
        ),
        ("etc/group", E::File(b"root:x:0:\nnogroup:x:65534:\n")),
        ("tmp", E::Dir),
        ("www", E::Dir),
        ("www/index.html", E::File(b"hello from ferro\n")),
    ]);
    layer(&e)
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn config_for(layers: &[Vec<u8>], cmd: &[&str]) -> Vec<u8> {
    let diffs: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diffs}
    }))
    .unwrap()
}

pub fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

/// An OCI layout tarball of one image. `corrupt` stores the first layer
/// under a digest that does not match its bytes.
pub fn oci_archive(name: &str, layers: &[Vec<u8>], corrupt: bool) -> Vec<u8> {
    let cfg = config_for(layers, &["sh"]);
    let gzs: Vec<Vec<u8>> = layers.iter().map(|l| gz(l)).collect();
    let mut descs = Vec::new();
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, g) in gzs.iter().enumerate() {
        let d = Digest::of(g);
        let mut data = g.clone();
        if corrupt && i == 0 {
            let n = data.len();
            data[n - 10] ^= 0xff;
        }
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": g.len()}));
        blobs.push((d.hex().to_string(), data));
    }
    let cd = Digest::of(&cfg);
    let man = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cfg.len()},
        "layers": descs
    }))
    .unwrap();
    let md = Digest::of(&man);
    let idx = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": man.len(),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}}]}))
    .unwrap();
    blobs.push((cd.hex().to_string(), cfg));
    blobs.push((md.hex().to_string(), man));
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut b, "index.json", &idx);
    for (h, d) in &blobs {
        add(&mut b, &format!("blobs/sha256/{h}"), d);
    }
    b.into_inner().unwrap()
}

/// A legacy docker-archive (`docker save` before 25): `<id>/layer.tar`,
/// `<config>.json`, `manifest.json`.
pub fn docker_archive(name: &str, layers: &[Vec<u8>]) -> Vec<u8> {
    let cfg = config_for(layers, &["sh"]);
    let cd = Digest::of(&cfg);
    let mut b = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for l in layers {
        let n = format!("{}/layer.tar", Digest::of(l).hex());
        add(&mut b, &n, l);
        names.push(n);
    }
    add(&mut b, &format!("{}.json", cd.hex()), &cfg);
    let m = json!([{"Config": format!("{}.json", cd.hex()), "RepoTags": [name], "Layers": names}]);
    add(&mut b, "manifest.json", &serde_json::to_vec(&m).unwrap());
    b.into_inner().unwrap()
}
