//! Fetching Debian riscv64 packages with the host's own apt: a temporary
//! sources list (mirror taken from the host's apt configuration, suite
//! trixie), private lists/cache directories, and `apt-get download`. apt
//! verifies the Release signature and every package hash.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const SUITE: &str = "trixie";
pub const ARCH: &str = "riscv64";

/// One `deb` source from the host configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub signed_by: Option<String>,
}

/// Parses one-line (`sources.list`) and deb822 (`*.sources`) formats and
/// returns the main Debian archive entries (not security/updates-only ones).
pub fn parse_sources(text: &str, deb822: bool) -> Vec<Source> {
    let mut out = Vec::new();
    let plausible = |uri: &str, suites: &str| {
        !suites.split_whitespace().all(|s| s.contains("security"))
            && !uri.contains("security")
            && uri.trim_end_matches('/').ends_with("/debian")
    };
    if deb822 {
        for stanza in text.split("\n\n") {
            let mut types = String::new();
            let mut uris = String::new();
            let mut suites = String::new();
            let mut signed = None;
            let mut enabled = true;
            for line in stanza.lines() {
                let line = line.trim_end();
                if line.starts_with('#') {
                    continue;
                }
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = v.to_string(),
                    "uris" => uris = v.to_string(),
                    "suites" => suites = v.to_string(),
                    "signed-by" if v.starts_with('/') => signed = Some(v.to_string()),
                    "enabled" => enabled = v != "no",
                    _ => {}
                }
            }
            if !enabled || !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            for uri in uris.split_whitespace() {
                if plausible(uri, &suites) {
                    out.push(Source {
                        uri: uri.to_string(),
                        signed_by: signed.clone(),
                    });
                }
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut rest = match line.strip_prefix("deb ") {
                Some(r) => r.trim(),
                None => continue,
            };
            let mut signed = None;
            if rest.starts_with('[') {
                let Some(end) = rest.find(']') else { continue };
                for opt in rest[1..end].split_whitespace() {
                    if let Some(v) = opt.strip_prefix("signed-by=") {
                        signed = Some(v.to_string());
                    }
                }
                rest = rest[end + 1..].trim();
            }
            let mut parts = rest.split_whitespace();
            let (Some(uri), Some(suite)) = (parts.next(), parts.next()) else {
                continue;
            };
            if plausible(uri, suite) {
                out.push(Source {
                    uri: uri.to_string(),
                    signed_by: signed,
                });
            }
        }
    }
    out
}

/// The Debian mirror the host uses. `FERRO_APT_MIRROR` overrides it.
pub fn host_mirror() -> Result<Source> {
    if let Ok(uri) = std::env::var("FERRO_APT_MIRROR") {
        return Ok(Source {
            uri,
            signed_by: None,
        });
    }
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy().to_string();
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if name.ends_with(".sources") {
                found.extend(parse_sources(&text, true));
            } else if name.ends_with(".list") {
                found.extend(parse_sources(&text, false));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        found.extend(parse_sources(&text, false));
    }
    found.into_iter().next().context(
        "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d \
         (set FERRO_APT_MIRROR to a Debian archive URI)",
    )
}

pub struct Apt {
    root: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what} (is apt installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Apt {
    /// Sets up a private apt tree under `root` for the given mirror.
    pub fn new(root: &Path, src: &Source) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial", "etc", "debs"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("cannot create {}", root.join(d).display()))?;
        }
        let keyring = src
            .signed_by
            .clone()
            .or_else(|| {
                let k = "/usr/share/keyrings/debian-archive-keyring.gpg";
                Path::new(k).exists().then(|| k.to_string())
            })
            .context("no Debian archive keyring (install debian-archive-keyring)")?;
        let list = format!("deb [signed-by={keyring}] {} {SUITE} main\n", src.uri);
        std::fs::write(root.join("etc/sources.list"), list)?;
        Ok(Apt {
            root: root.to_path_buf(),
        })
    }

    fn cmd(&self, tool: &str) -> Command {
        let r = self.root.display();
        let mut c = Command::new(tool);
        c.arg("-q")
            .arg(format!("-oDir::Etc::SourceList={r}/etc/sources.list"))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!("-oDir::State::Lists={r}/lists"))
            .arg("-oDir::State::status=/dev/null")
            .arg(format!("-oDir::Cache={r}/cache"))
            .arg(format!("-oAPT::Architecture={ARCH}"))
            .arg(format!("-oAPT::Architectures={ARCH}"))
            .arg("-oAPT::Sandbox::User=root")
            .arg("-oDebug::NoLocking=1")
            .env("LC_ALL", "C");
        c
    }

    pub fn update(&self) -> Result<()> {
        run(self.cmd("apt-get").arg("update"), "apt-get update").map(|_| ())
    }

    /// The versioned package a metapackage depends on (e.g. the real kernel
    /// image behind `linux-image-riscv64`).
    pub fn resolve_dep(&self, meta: &str, prefix: &str) -> Result<String> {
        let out = run(self.cmd("apt-cache").args(["show", meta]), "apt-cache show")?;
        for line in out.lines() {
            if let Some(deps) = line.strip_prefix("Depends:") {
                for d in deps.split(',') {
                    let name = d.split_whitespace().next().unwrap_or("");
                    if name.starts_with(prefix) {
                        return Ok(name.to_string());
                    }
                }
            }
        }
        bail!("{meta} has no dependency named {prefix}*")
    }

    /// Downloads packages (hash-checked by apt) and returns the .deb paths.
    pub fn download(&self, pkgs: &[String]) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("debs");
        for e in std::fs::read_dir(&dir)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut c = self.cmd("apt-get");
        c.current_dir(&dir).arg("download").args(pkgs);
        run(&mut c, "apt-get download")?;
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        debs.sort();
        if debs.len() != pkgs.len() {
            bail!(
                "apt-get download produced {} packages, expected {}",
                debs.len(),
                pkgs.len()
            );
        }
        Ok(debs)
    }
}

/// Unpacks a .deb's data into `dest`.
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
        "dpkg-deb -x",
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mirror_in_both_formats() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb\nURIs: https://other.example/apt\nSuites: nodistro\n";
        assert_eq!(
            parse_sources(deb822, true),
            vec![Source {
                uri: "http://mirror.example/debian".into(),
                signed_by: Some("/usr/share/keyrings/k.gpg".into())
            }]
        );
        let list = "# deb http://old.example/debian sid main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n\
                    deb http://m.example/debian-security bookworm-security main\n\
                    deb-src http://m.example/debian bookworm main\n";
        assert_eq!(
            parse_sources(list, false),
            vec![Source {
                uri: "http://m.example/debian/".into(),
                signed_by: Some("/k.gpg".into())
            }]
        );
        assert!(parse_sources(
            "Types: deb\nURIs: http://x/debian\nSuites: a\nEnabled: no\n",
            true
        )
        .is_empty());
    }
}
