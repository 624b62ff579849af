//! `ferro container build`: a Dockerfile front end (parsed by the
//! `dockerfile-parser` crate; ADD/WORKDIR/USER/EXPOSE arrive as its `Misc`
//! instructions) and a small builder: each stage starts from an image, a
//! previous stage or `scratch`; RUN executes in a container by the OCI
//! runtime over an overlay of the current layers and its upper dir becomes
//! the new layer; COPY/ADD build a layer from the context or another stage;
//! the rest edits the image config. Layer steps are cached under
//! `build-cache/<key>`, the key chaining the parent key, the instruction
//! with its expanded variables and (for COPY/ADD) a hash of the sources.

use crate::container::{self, Container, RunConfig};
use crate::paths::Engine;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr};
use images::store::{Descriptor, ImageConfig, Store, MT_OCI_LAYER_GZIP};
use images::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name (and tag) of the result.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Dockerfile (default CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// ARG values: NAME=VALUE.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Network of RUN steps: bridge (default, as docker: own namespace,
    /// NAT to the outside), host or none.
    #[arg(long = "network", default_value = "bridge")]
    pub network: String,
    pub context: PathBuf,
}

/// The image a stage has built so far.
#[derive(Clone, Default)]
struct State {
    layers: Vec<Descriptor>,
    dirs: Vec<PathBuf>,
    config: ImageConfig,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    layer: Descriptor,
    diff_id: String,
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` / `${VAR:+alt}`.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '\\' && i + 1 < b.len() && b[i + 1] == '$' {
            out.push('$');
            i += 2;
            continue;
        }
        if b[i] != '$' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        if b[i + 1] == '{' {
            let Some(end) = b[i + 2..].iter().position(|&c| c == '}') else {
                out.push(b[i]);
                i += 1;
                continue;
            };
            let inner: String = b[i + 2..i + 2 + end].iter().collect();
            let val = if let Some((n, d)) = inner.split_once(":-") {
                vars.get(n)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| d.to_string())
            } else if let Some((n, a)) = inner.split_once(":+") {
                if vars.get(n).is_some_and(|v| !v.is_empty()) {
                    a.to_string()
                } else {
                    String::new()
                }
            } else {
                vars.get(&inner).cloned().unwrap_or_default()
            };
            out.push_str(&val);
            i += end + 3;
        } else if b[i + 1] == '_' || b[i + 1].is_ascii_alphabetic() {
            let mut j = i + 1;
            while j < b.len() && (b[j] == '_' || b[j].is_ascii_alphanumeric()) {
                j += 1;
            }
            let name: String = b[i + 1..j].iter().collect();
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            i = j;
        } else {
            out.push('$');
            i += 1;
        }
    }
    out
}

fn env_map(cfg: &ImageConfig) -> Vec<(String, String)> {
    cfg.config
        .env
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

fn set_env(cfg: &mut ImageConfig, k: &str, v: &str) {
    let mut env = cfg.config.env.take().unwrap_or_default();
    env.retain(|e| e.split_once('=').map(|(a, _)| a) != Some(k));
    env.push(format!("{k}={v}"));
    cfg.config.env = Some(env);
}

fn argv(expr: &ShellOrExecExpr, vars: &HashMap<String, String>, shell_expand: bool) -> Vec<String> {
    match expr {
        ShellOrExecExpr::Shell(s) => {
            let text = s.to_string();
            let text = if shell_expand {
                expand(&text, vars)
            } else {
                text
            };
            vec!["/bin/sh".into(), "-c".into(), text.trim().to_string()]
        }
        ShellOrExecExpr::Exec(a) => a.as_str_vec().iter().map(|s| s.to_string()).collect(),
    }
}

/// Splits a Misc instruction's arguments into words (quotes honoured).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut q: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (q, c) {
            (Some(qc), c) if c == qc => q = None,
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => {
                q = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        out.push(cur);
    }
    out
}

struct Builder<'a> {
    eng: &'a Engine,
    store: Store,
    context: PathBuf,
    no_cache: bool,
    network: String,
    build_args: HashMap<String, String>,
    stages: Vec<(Option<String>, State)>,
    step: usize,
    layer_steps: usize,
    hits: usize,
}

pub fn main(eng: &Engine, a: &BuildArgs) -> Result<i32> {
    let context = fs::canonicalize(&a.context)
        .with_context(|| format!("build context {} not found", a.context.display()))?;
    let file = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    if !["bridge", "host", "none"].contains(&a.network.as_str()) {
        bail!("build --network {}: use bridge, host or none", a.network);
    }
    let mut build_args = HashMap::new();
    for b in &a.build_args {
        match b.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => build_args.insert(b.clone(), std::env::var(b).unwrap_or_default()),
        };
    }
    let mut b = Builder {
        eng,
        store: eng.images()?,
        context,
        no_cache: a.no_cache,
        network: a.network.clone(),
        build_args,
        stages: Vec::new(),
        step: 0,
        layer_steps: 0,
        hits: 0,
    };
    let st = b.build(&text, a.target.as_deref())?;
    let mut cfg = st.config.clone();
    // A fully cached rebuild reproduces the same image ID: the creation
    // time is remembered per final cache key.
    let stamp = eng.root.join("build-cache").join(format!(
        "created-{}",
        sha(&[&st.key, &serde_json::to_string(&st.config)?])
    ));
    let created = match fs::read_to_string(&stamp) {
        Ok(c) if !a.no_cache => c,
        _ => {
            let c = images::store::now_rfc3339();
            fs::write(&stamp, &c)?;
            c
        }
    };
    cfg.created = Some(created);
    if cfg.architecture.is_empty() {
        cfg.architecture = "amd64".into();
        cfg.os = "linux".into();
    }
    cfg.rootfs.kind = "layers".into();
    let md = b
        .store
        .commit(&cfg, st.layers.clone(), a.tags.first().map(String::as_str))?;
    for t in a.tags.iter().skip(1) {
        b.store.tag(t, &md)?;
    }
    let img = b.store.load_image(&md)?;
    eprintln!("{} of {} layer steps from cache", b.hits, b.layer_steps);
    println!("Successfully built {}", img.id.short());
    for t in &a.tags {
        println!("Successfully tagged {}", images::reference::normalize(t));
    }
    Ok(0)
}

impl Builder<'_> {
    fn build(&mut self, text: &str, target: Option<&str>) -> Result<State> {
        let df = Dockerfile::parse(text).map_err(|e| anyhow!("Dockerfile parse error: {e}"))?;
        let mut global: HashMap<String, String> = HashMap::new();
        for ga in &df.global_args {
            let n = ga.name.content.clone();
            let v = self
                .build_args
                .get(&n)
                .cloned()
                .or_else(|| ga.value.as_ref().map(|v| v.content.clone()))
                .unwrap_or_default();
            global.insert(n, v);
        }
        let stages: Vec<_> = df.iter_stages().collect();
        if stages.is_empty() {
            bail!("Dockerfile has no FROM instruction");
        }
        let mut last = None;
        for stage in stages {
            let st = self.build_stage(&stage.instructions, &global)?;
            let name = stage.name.clone();
            self.stages.push((name.clone(), st.clone()));
            last = Some(st);
            if target.is_some() && target == name.as_deref() {
                break;
            }
        }
        if let Some(t) = target {
            if !self.stages.iter().any(|(n, _)| n.as_deref() == Some(t)) {
                bail!("target stage {t} could not be found");
            }
        }
        last.ok_or_else(|| anyhow!("nothing to build"))
    }

    fn stage_by_ref(&self, r: &str) -> Option<&State> {
        if let Some((_, s)) = self.stages.iter().find(|(n, _)| n.as_deref() == Some(r)) {
            return Some(s);
        }
        r.parse::<usize>()
            .ok()
            .and_then(|i| self.stages.get(i))
            .map(|(_, s)| s)
    }

    fn image_state(&self, name: &str) -> Result<State> {
        let img = match self.store.resolve(name) {
            Ok(i) => i,
            Err(images::Error::NoSuchImage(_)) => {
                images::registry::pull(
                    &self.store,
                    name,
                    &images::registry::default_platform(),
                    &crate::registry_auth(),
                    true,
                )?;
                self.store.resolve(name)?
            }
            Err(e) => return Err(e.into()),
        };
        let dirs = self.store.layer_dirs(&img)?;
        Ok(State {
            layers: img.manifest.layers.clone(),
            dirs,
            config: img.config.clone(),
            key: sha(&["image", &img.id.to_string()]),
        })
    }

    fn build_stage(
        &mut self,
        instrs: &[&Instruction],
        global: &HashMap<String, String>,
    ) -> Result<State> {
        let from = instrs
            .first()
            .and_then(|i| i.as_from())
            .ok_or_else(|| anyhow!("stage does not start with FROM"))?;
        let base = expand(&from.image.content, global);
        eprintln!("STEP {}: FROM {base}", self.step_no());
        let mut st = if base == "scratch" {
            State {
                key: sha(&["scratch"]),
                ..Default::default()
            }
        } else if let Some(s) = self.stage_by_ref(&base) {
            s.clone()
        } else {
            self.image_state(&base)?
        };
        // Config history is not carried; diff_ids are rebuilt at commit.
        st.config.history.clear();
        let mut args: HashMap<String, String> = HashMap::new();
        for ins in &instrs[1..] {
            let mut vars: HashMap<String, String> = args.clone();
            vars.extend(env_map(&st.config));
            match ins {
                Instruction::Arg(a) => {
                    let n = a.name.content.clone();
                    let v = self
                        .build_args
                        .get(&n)
                        .cloned()
                        .or_else(|| a.value.as_ref().map(|v| expand(&v.content, &vars)))
                        .or_else(|| global.get(&n).cloned())
                        .unwrap_or_default();
                    eprintln!("STEP {}: ARG {n}", self.step_no());
                    args.insert(n, v);
                }
                Instruction::Env(e) => {
                    for var in &e.vars {
                        let v = expand(&var.value.to_string(), &vars);
                        let v = unquote(&v);
                        eprintln!("STEP {}: ENV {}={v}", self.step_no(), var.key.content);
                        set_env(&mut st.config, &var.key.content, &v);
                        st.key = sha(&[&st.key, "ENV", &var.key.content, &v]);
                    }
                }
                Instruction::Label(l) => {
                    let labels = st.config.config.labels.get_or_insert_with(BTreeMap::new);
                    for lab in &l.labels {
                        labels.insert(
                            unquote(&lab.name.content),
                            unquote(&expand(&lab.value.content, &vars)),
                        );
                    }
                    eprintln!("STEP {}: LABEL", self.step_no());
                }
                Instruction::Cmd(c) => {
                    st.config.config.cmd = Some(argv(&c.expr, &vars, false));
                    eprintln!(
                        "STEP {}: CMD {:?}",
                        self.step_no(),
                        st.config.config.cmd.as_ref().unwrap()
                    );
                }
                Instruction::Entrypoint(c) => {
                    st.config.config.entrypoint = Some(argv(&c.expr, &vars, false));
                    st.config.config.cmd = None;
                    eprintln!(
                        "STEP {}: ENTRYPOINT {:?}",
                        self.step_no(),
                        st.config.config.entrypoint.as_ref().unwrap()
                    );
                }
                Instruction::Run(r) => {
                    let cmd = argv(&r.expr, &vars, false);
                    eprintln!("STEP {}: RUN {}", self.step_no(), cmd.join(" "));
                    let mut argvals: Vec<String> =
                        args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    argvals.sort();
                    let key = sha(&[
                        &st.key,
                        "RUN",
                        &serde_json::to_string(&cmd)?,
                        &argvals.join("\n"),
                        st.config.config.user.as_deref().unwrap_or(""),
                        st.config.config.working_dir.as_deref().unwrap_or(""),
                    ]);
                    self.layer_step(&mut st, key, |b, st, out| b.run_step(st, &cmd, &args, out))?;
                }
                Instruction::Copy(c) => {
                    let from = c
                        .flags
                        .iter()
                        .find(|f| f.name.content == "from")
                        .map(|f| f.value.content.clone());
                    let srcs: Vec<String> = c
                        .sources
                        .iter()
                        .map(|s| expand(&s.content, &vars))
                        .collect();
                    let dest = expand(&c.destination.content, &vars);
                    eprintln!("STEP {}: COPY {} {dest}", self.step_no(), srcs.join(" "));
                    self.copy(&mut st, from.as_deref(), &srcs, &dest)?;
                }
                Instruction::Misc(m) => {
                    let inst = m.instruction.content.to_ascii_uppercase();
                    let rest = expand(m.arguments.to_string().trim(), &vars);
                    eprintln!("STEP {}: {inst} {rest}", self.step_no());
                    match inst.as_str() {
                        "WORKDIR" => {
                            let cur = st
                                .config
                                .config
                                .working_dir
                                .clone()
                                .unwrap_or_else(|| "/".into());
                            let w = if rest.starts_with('/') {
                                rest.clone()
                            } else {
                                format!("{}/{}", cur.trim_end_matches('/'), rest)
                            };
                            st.config.config.working_dir = Some(w.clone());
                            st.key = sha(&[&st.key, "WORKDIR", &w]);
                        }
                        "USER" => {
                            st.config.config.user = Some(rest.clone());
                            st.key = sha(&[&st.key, "USER", &rest]);
                        }
                        "EXPOSE" => {
                            let ports = st
                                .config
                                .config
                                .exposed_ports
                                .get_or_insert_with(BTreeMap::new);
                            for p in words(&rest) {
                                let p = if p.contains('/') {
                                    p
                                } else {
                                    format!("{p}/tcp")
                                };
                                ports.insert(p, serde_json::json!({}));
                            }
                        }
                        "STOPSIGNAL" => st.config.config.stop_signal = Some(rest.clone()),
                        "ADD" => {
                            let w = words(&rest);
                            let (flags, paths): (Vec<_>, Vec<_>) =
                                w.iter().partition(|x| x.starts_with("--"));
                            if paths.len() < 2 {
                                bail!("ADD needs a source and a destination");
                            }
                            let from = flags
                                .iter()
                                .find_map(|f| f.strip_prefix("--from="))
                                .map(str::to_string);
                            let srcs: Vec<String> = paths[..paths.len() - 1]
                                .iter()
                                .map(|s| s.to_string())
                                .collect();
                            let dest = paths[paths.len() - 1].to_string();
                            let urls = srcs.iter().filter(|s| is_url(s)).count();
                            if urls > 0 {
                                if urls != srcs.len() || from.is_some() {
                                    bail!("ADD: URLs cannot be mixed with local sources or --from");
                                }
                                // Downloads land in a scratch dir used as the source root.
                                let t = tempfile::tempdir_in(self.store.tmp_dir())?;
                                let mut names = Vec::new();
                                for u in &srcs {
                                    let name = url_file_name(u)?;
                                    let data = download(u)?;
                                    let p = t.path().join(&name);
                                    fs::write(&p, data)?;
                                    fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
                                    names.push(name);
                                }
                                let root = t.path().to_path_buf();
                                self.copy_from(&mut st, Source::Dir(root), &names, &dest, false)?;
                            } else {
                                let src = match &from {
                                    Some(f) => Source::Stage(f.clone()),
                                    None => Source::Context,
                                };
                                // Local archives from the context are unpacked, as docker.
                                let extract = from.is_none();
                                self.copy_from(&mut st, src, &srcs, &dest, extract)?;
                            }
                        }
                        "MAINTAINER" | "VOLUME" | "SHELL" | "HEALTHCHECK" | "ONBUILD" => {
                            eprintln!("warning: {inst} is ignored by this builder");
                        }
                        other => bail!("unknown Dockerfile instruction {other}"),
                    }
                }
                Instruction::From(_) => bail!("FROM in the middle of a stage"),
            }
        }
        Ok(st)
    }

    fn step_no(&mut self) -> usize {
        self.step += 1;
        self.step
    }

    /// Runs `make` (which fills a fresh directory with the layer's changes)
    /// unless the cache has `key`, and appends the layer to `st`.
    fn layer_step(
        &mut self,
        st: &mut State,
        key: String,
        make: impl FnOnce(&mut Self, &State, &Path) -> Result<()>,
    ) -> Result<()> {
        self.layer_steps += 1;
        let cache = self.eng.root.join("build-cache").join(&key);
        if !self.no_cache {
            if let Ok(data) = fs::read(&cache) {
                if let Ok(ent) = serde_json::from_slice::<CacheEntry>(&data) {
                    let diff = Digest::parse(&ent.diff_id)?;
                    let blob = Digest::parse(&ent.layer.digest)?;
                    if self.store.has_blob(&blob) {
                        if !self.store.layer_dir(&diff).exists() {
                            self.store.unpack_layer(&blob, &diff)?;
                        }
                        eprintln!(" ---> Using cache");
                        self.hits += 1;
                        self.push_layer(st, ent, key);
                        return Ok(());
                    }
                }
            }
        }
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.store.tmp_dir())?;
        let out = work.path().join("layer");
        fs::create_dir(&out)?;
        make(self, st, &out)?;
        let mut tarball = tempfile::NamedTempFile::new_in(self.store.tmp_dir())?;
        {
            let w = std::io::BufWriter::new(tarball.as_file_mut());
            images::diff::tar_dir(&out, w)?.flush()?;
        }
        let diff = {
            let f = fs::File::open(tarball.path())?;
            let mut h = images::digest::HashingReader::new(f);
            std::io::copy(&mut h, &mut std::io::sink())?;
            h.finish().0
        };
        let gz = {
            let f = fs::File::open(tarball.path())?;
            let mut enc = flate2::read::GzEncoder::new(
                std::io::BufReader::new(f),
                flate2::Compression::fast(),
            );
            self.store.put_blob_reader(&mut enc, None)?
        };
        tarball.as_file_mut().flush()?;
        let dest = self.store.layer_dir(&diff);
        if !dest.exists() && fs::rename(&out, &dest).is_err() && !dest.exists() {
            bail!("storing layer {}", dest.display());
        }
        let ent = CacheEntry {
            layer: Descriptor {
                media_type: MT_OCI_LAYER_GZIP.into(),
                digest: gz.0.to_string(),
                size: gz.1,
                annotations: None,
                platform: None,
            },
            diff_id: diff.to_string(),
        };
        fs::write(&cache, serde_json::to_vec(&ent)?)?;
        self.store
            .pin_blobs(&[gz.0.hex().to_string(), diff.hex().to_string()])?;
        self.push_layer(st, ent, key);
        Ok(())
    }

    fn push_layer(&self, st: &mut State, ent: CacheEntry, key: String) {
        let diff = Digest::parse(&ent.diff_id).expect("validated diff_id");
        st.dirs.push(self.store.layer_dir(&diff));
        st.config.rootfs.diff_ids.push(ent.diff_id);
        st.layers.push(ent.layer);
        st.key = key;
    }

    /// Runs `cmd` over the stage's layers; the overlay's upper dir is `out`.
    fn run_step(
        &mut self,
        st: &State,
        cmd: &[String],
        args: &HashMap<String, String>,
        out: &Path,
    ) -> Result<()> {
        let id = container::random_id()?;
        let bundle = out.parent().unwrap().join("bundle");
        let rootfs = bundle.join("rootfs");
        let work = bundle.join("work");
        let empty = bundle.join("empty");
        for d in [&rootfs, &work, &empty] {
            fs::create_dir_all(d)?;
        }
        images::mount::mount_overlay(&st.dirs, out, &work, &rootfs, &empty)?;
        let mut net: Option<Container> = None;
        let mut created_mountpoints = Vec::new();
        let res = (|| -> Result<i32> {
            let user = st.config.config.user.clone().unwrap_or_default();
            let (uid, gid) = container::resolve_user(&rootfs, &user)?;
            let workdir = st
                .config
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".into());
            crate::lifecycle::mkdir_in(&rootfs, &workdir)?;
            let mut env = st.config.config.env.clone().unwrap_or_default();
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.push(
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                );
            }
            for (k, v) in args {
                if !env.iter().any(|e| e.starts_with(&format!("{k}="))) {
                    env.push(format!("{k}={v}"));
                }
            }
            let mut c = Container {
                id: id.clone(),
                config: RunConfig {
                    args: cmd.to_vec(),
                    env,
                    workdir,
                    network: self.network.clone(),
                    hostname: id[..12].to_string(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let netns = if c.config.network == "bridge" {
                // Whatever part was set up (netns, lease) is torn down below.
                let r = crate::network::setup_bridge(self.eng, &mut c);
                net = Some(c.clone());
                r.context(
                    "setting up the bridge network for RUN (use build --network host or none)",
                )?;
                // Name resolution inside the step; mount points it creates
                // in the layer are removed again below.
                let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                fs::write(bundle.join("resolv.conf"), resolv)?;
                fs::write(
                    bundle.join("hosts"),
                    format!("127.0.0.1\tlocalhost\n{}\t{}\n", c.ip, c.config.hostname),
                )?;
                for f in ["etc/resolv.conf", "etc/hosts"] {
                    if fs::symlink_metadata(rootfs.join(f)).is_err() {
                        created_mountpoints.push(f);
                    }
                }
                Some(crate::network::netns_path(&c))
            } else {
                None
            };
            let spec = crate::spec::build(&c, &bundle, netns.as_deref(), uid, gid)?;
            fs::write(
                bundle.join("config.json"),
                serde_json::to_vec_pretty(&spec)?,
            )?;
            let rt = crate::runtime::Runtime {
                argv: &self.eng.runtime,
                root: &self.eng.runtime_root(),
            };
            let st = rt
                .cmd()
                .arg("run")
                .arg("--bundle")
                .arg(&bundle)
                .arg(&id)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::from(
                    std::io::stderr().as_fd().try_clone_to_owned()?,
                ))
                .status()
                .context("running the OCI runtime")?;
            Ok(st.code().unwrap_or(255))
        })();
        let _ = images::mount::unmount(&rootfs);
        if let Some(c) = &net {
            crate::network::teardown(c);
        }
        for f in created_mountpoints {
            let p = out.join(f);
            if fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
                let _ = fs::remove_file(&p);
            }
        }
        let code = res?;
        if code != 0 {
            bail!("RUN {} returned a non-zero code: {code}", cmd.join(" "));
        }
        Ok(())
    }

    fn copy(
        &mut self,
        st: &mut State,
        from: Option<&str>,
        srcs: &[String],
        dest: &str,
    ) -> Result<()> {
        let src = match from {
            Some(f) => Source::Stage(f.to_string()),
            None => Source::Context,
        };
        self.copy_from(st, src, srcs, dest, false)
    }

    /// COPY/ADD: `extract` unpacks tar archives (plain, gzip, xz) into
    /// the destination directory instead of copying them.
    fn copy_from(
        &mut self,
        st: &mut State,
        source: Source,
        srcs: &[String],
        dest: &str,
        extract: bool,
    ) -> Result<()> {
        let from = match &source {
            Source::Stage(f) => Some(f.as_str()),
            _ => None,
        };
        if srcs.is_empty() {
            bail!("COPY needs a source and a destination");
        }
        // Where sources come from: the context, or a mounted stage/image.
        let mut _mounted: Option<(tempfile::TempDir, PathBuf)> = None;
        let (src_root, from_key) = match from {
            None => match &source {
                Source::Dir(d) => (d.clone(), String::from("download")),
                _ => (self.context.clone(), String::from("context")),
            },
            Some(f) => {
                let other = match self.stage_by_ref(f) {
                    Some(s) => s.clone(),
                    None => self.image_state(f)?,
                };
                let t = tempfile::Builder::new()
                    .prefix("from-")
                    .tempdir_in(self.store.tmp_dir())?;
                let root = t.path().join("rootfs");
                for d in ["rootfs", "upper", "work", "empty"] {
                    fs::create_dir(t.path().join(d))?;
                }
                images::mount::mount_overlay(
                    &other.dirs,
                    &t.path().join("upper"),
                    &t.path().join("work"),
                    &root,
                    &t.path().join("empty"),
                )?;
                let k = other.key.clone();
                _mounted = Some((t, root.clone()));
                (root, k)
            }
        };
        let res = (|| -> Result<()> {
            let mut resolved = Vec::new();
            for s in srcs {
                let p = safe_join(&src_root, s)?;
                if fs::symlink_metadata(&p).is_err() {
                    bail!(
                        "COPY failed: {s} not found in {}",
                        if from.is_some() {
                            "the source stage"
                        } else {
                            "the build context"
                        }
                    );
                }
                resolved.push(p);
            }
            let workdir = st
                .config
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".into());
            let dest_abs = if dest.starts_with('/') {
                dest.to_string()
            } else {
                format!("{}/{}", workdir.trim_end_matches('/'), dest)
            };
            let mut h = Sha256::new();
            for p in &resolved {
                hash_tree(p, &mut h)?;
            }
            let content = hex::encode(h.finalize());
            let key = sha(&[
                &st.key,
                if extract { "ADD" } else { "COPY" },
                &from_key,
                &srcs.join("\n"),
                &dest_abs,
                &content,
            ]);
            let multi =
                resolved.len() > 1 || dest.ends_with('/') || dest == "." || dest.ends_with("/.");
            self.layer_step(st, key, |_, _, out| {
                let dest_rel = dest_abs.trim_start_matches('/');
                for p in &resolved {
                    let m = fs::symlink_metadata(p)?;
                    if extract && m.is_file() {
                        if let Some(kind) = archive_kind(p)? {
                            let d = safe_join(out, dest_rel)?;
                            fs::create_dir_all(&d)?;
                            unpack_archive(p, kind, &d)?;
                            continue;
                        }
                    }
                    if m.is_dir() {
                        copy_tree(p, &safe_join(out, dest_rel)?)?;
                    } else {
                        let target = if multi {
                            safe_join(
                                out,
                                &format!("{dest_rel}/{}", p.file_name().unwrap().to_string_lossy()),
                            )?
                        } else {
                            safe_join(out, dest_rel)?
                        };
                        copy_tree(p, &target)?;
                    }
                }
                Ok(())
            })
        })();
        if let Some((_, root)) = &_mounted {
            let _ = images::mount::unmount(root);
        }
        res
    }
}

enum Source {
    Context,
    Stage(String),
    Dir(PathBuf),
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The file name ADD gives a download: the URL path's last segment.
fn url_file_name(u: &str) -> Result<String> {
    let rest = u.split_once("://").map(|x| x.1).unwrap_or(u);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let name = path.split_once('/').map(|x| x.1).unwrap_or("");
    let name = name.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." {
        bail!("ADD {u}: cannot determine a file name from the URL");
    }
    Ok(name.to_string())
}

/// GET `url` (redirects followed; proxies from the environment).
fn download(url: &str) -> Result<Vec<u8>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .with_context(|| format!("ADD: fetching {url}"))?;
        if !r.status().is_success() {
            bail!("ADD: fetching {url}: HTTP {}", r.status());
        }
        Ok(r.bytes()
            .await
            .with_context(|| format!("ADD: reading {url}"))?
            .to_vec())
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Archive {
    Tar,
    Gzip,
    Xz,
}

/// Recognises an archive by its bytes, as docker does (not by its name).
fn archive_kind(p: &Path) -> Result<Option<Archive>> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let mut f = fs::File::open(p)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let h = &head[..n];
    Ok(if h.starts_with(&[0x1f, 0x8b]) {
        Some(Archive::Gzip)
    } else if h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Archive::Xz)
    } else if n >= 262 && &h[257..262] == b"ustar" {
        Some(Archive::Tar)
    } else {
        None
    })
}

/// Unpacks into `dest` (tar refuses `..`, absolute names and writes through
/// symlinks that leave `dest`).
fn unpack_archive(p: &Path, kind: Archive, dest: &Path) -> Result<()> {
    let f = std::io::BufReader::new(fs::File::open(p)?);
    let r: Box<dyn std::io::Read> = match kind {
        Archive::Tar => Box::new(f),
        Archive::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        Archive::Xz => Box::new(xz2::read::XzDecoder::new(f)),
    };
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    a.unpack(dest)
        .with_context(|| format!("ADD: unpacking {}", p.display()))
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2
        && ((t.starts_with('"') && t.ends_with('"')) || (t.starts_with('\'') && t.ends_with('\'')))
    {
        t[1..t.len() - 1].to_string()
    } else {
        t.to_string()
    }
}

/// `root/rel` with `..` refused, so sources stay inside the context.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::ParentDir => bail!("path {rel:?} leaves the build context"),
            _ => {}
        }
    }
    Ok(p)
}

fn hash_tree(p: &Path, h: &mut Sha256) -> Result<()> {
    let m = fs::symlink_metadata(p)?;
    h.update(
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .as_bytes(),
    );
    h.update(m.mode().to_le_bytes());
    if m.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)?.flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            hash_tree(&n, h)?;
        }
    } else if m.file_type().is_symlink() {
        h.update(fs::read_link(p)?.as_os_str().as_encoded_bytes());
    } else if m.is_file() {
        let mut f = fs::File::open(p)?;
        std::io::copy(&mut f, h)?;
    }
    Ok(())
}

/// Copies a file, symlink or directory tree (contents merged into `dst`).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let m = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    if m.is_dir() {
        fs::create_dir_all(dst)?;
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        for e in fs::read_dir(src)?.flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if m.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if m.is_file() {
        fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    Ok(())
}

use std::os::fd::AsFd;

/// The front end alone (parse, stage split, variable expansion, word
/// splitting), as the fuzz target drives it: one line per instruction.
pub fn front_end(text: &str) -> Result<Vec<String>> {
    let df = Dockerfile::parse(text).map_err(|e| anyhow!("Dockerfile parse error: {e}"))?;
    let mut vars: HashMap<String, String> = HashMap::new();
    for ga in &df.global_args {
        vars.insert(
            ga.name.content.clone(),
            ga.value
                .as_ref()
                .map(|v| v.content.clone())
                .unwrap_or_default(),
        );
    }
    let mut out = Vec::new();
    for stage in df.iter_stages() {
        for ins in &stage.instructions {
            out.push(match ins {
                Instruction::From(f) => format!("FROM {}", expand(&f.image.content, &vars)),
                Instruction::Arg(a) => format!("ARG {}", a.name.content),
                Instruction::Env(e) => {
                    for v in &e.vars {
                        let val = unquote(&expand(&v.value.to_string(), &vars));
                        vars.insert(v.key.content.clone(), val);
                    }
                    "ENV".into()
                }
                Instruction::Label(l) => format!("LABEL {}", l.labels.len()),
                Instruction::Run(r) => format!("RUN {:?}", argv(&r.expr, &vars, false)),
                Instruction::Cmd(c) => format!("CMD {:?}", argv(&c.expr, &vars, false)),
                Instruction::Entrypoint(c) => {
                    format!("ENTRYPOINT {:?}", argv(&c.expr, &vars, false))
                }
                Instruction::Copy(c) => format!(
                    "COPY {:?} {}",
                    c.sources
                        .iter()
                        .map(|s| expand(&s.content, &vars))
                        .collect::<Vec<_>>(),
                    expand(&c.destination.content, &vars)
                ),
                Instruction::Misc(m) => format!(
                    "{} {:?}",
                    m.instruction.content.to_ascii_uppercase(),
                    words(&expand(m.arguments.to_string().trim(), &vars))
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_expansion() {
        let mut v = HashMap::new();
        v.insert("A".to_string(), "x".to_string());
        assert_eq!(expand("$A/${A}/${B:-d}/${A:+y}/\\$A", &v), "x/x/d/y/$A");
        assert_eq!(expand("${unterminated", &v), "${unterminated");
    }

    #[test]
    fn front_end_corpus() {
        // The fuzz target's body over a small corpus: errors, never panics.
        for text in [
            "",
            "FROM",
            "FROM a\nRUN [\"unterminated",
            "FROM ${X:-busybox}\nENV A=1 B=\"two words\"\nRUN echo $A ${B}\nWORKDIR \"/a b\"\n",
            "ARG V\nFROM x:$V AS s\nCOPY --from=s /a /b\nEXPOSE 80 443/udp\nUSER 1:2\n",
            "FROM a\nRUN echo \\\n  continued\nCMD [\"x\", \"y\"]\n",
            "\u{0}\u{ff}$",
        ] {
            let _ = front_end(text);
        }
        let steps = front_end("FROM busybox\nENV A=1\nRUN echo $A\nWORKDIR /w\n").unwrap();
        assert_eq!(steps[0], "FROM busybox");
        assert!(steps[3].starts_with("WORKDIR"), "{steps:?}");
    }

    #[test]
    fn words_split() {
        assert_eq!(words(r#"--from=a "x y" z"#), vec!["--from=a", "x y", "z"]);
    }

    #[test]
    fn parser_front_end_on_a_multistage_file() {
        let df = Dockerfile::parse(
            "ARG BASE=busybox\nFROM $BASE AS b\nRUN echo hi > /x\nWORKDIR /app\nFROM scratch\nCOPY --from=b /x /y\nCMD [\"/y\"]\n",
        )
        .unwrap();
        let st: Vec<_> = df.iter_stages().collect();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].name.as_deref(), Some("b"));
        assert!(matches!(st[0].instructions[2], Instruction::Misc(_)));
    }
}
