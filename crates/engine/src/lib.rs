//! Docker-like container engine: `ferro container …` (plus `ferro ps` and
//! `ferro images`). Images come from the `images` crate; containers run
//! under any runc-compatible OCI runtime driven as a CLI (default: this
//! binary's `ferro oci`; `--runtime runc` works too), each watched by a
//! monitor process; networking via a bridge, veth pairs and iptables.
//! The engine is a library: `ferrod` calls it for its container API.
//!
//! Dependencies and why: `oci-spec` for the runtime spec defaults (the same
//! ones `runc spec` writes); `dockerfile-parser` (HPE's pest-based parser,
//! the most used Dockerfile parser on crates.io, with spans and stage
//! support) for the build front end; `tar`/`sha2`/`hex` for build layers
//! and cache keys; `libcontainer` (the workspace's own OCI runtime) so the
//! default runtime runs in-process instead of as a `ferro oci` subprocess;
//! `xz2` (liblzma, already linked by the workspace) for `ADD` of .tar.xz;
//! `reqwest` (with `tokio`/`rustls`, the HTTP stack `oci-client` already
//! pulls in) for `ADD https://…`.

pub mod attach;
pub mod build;
pub mod container;
pub mod lifecycle;
pub mod logs;
pub mod monitor;
pub mod network;
pub mod paths;
pub mod runtime;
pub mod spec;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use container::Container;
use lifecycle::CreateOpts;
use paths::Engine;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ContainerArgs {
    /// Engine state directory (default /var/lib/ferrovisor as root; $FERRO_ROOT).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// OCI runtime to drive (default: `ferro oci`; e.g. `runc`; $FERRO_RUNTIME).
    #[arg(long, global = true)]
    pub runtime: Option<String>,
    #[command(subcommand)]
    pub cmd: ContainerCmd,
}

#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE (or KEY to take it from this environment).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// HOST:CONTAINER[:ro]
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// HOST:CONTAINER[/proto]
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// user[:group] (names or IDs)
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit (e.g. 64m).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// no | always | unless-stopped | on-failure[:N]
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// bridge (default) | host | none
    #[arg(long = "network", alias = "net", default_value = "bridge")]
    pub network: String,
    #[arg(long)]
    pub hostname: Option<String>,
    /// IMAGE [COMMAND [ARG...]]: everything after the image goes to the container.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub cmdline: Vec<String>,
}

impl RunFlags {
    pub fn image(&self) -> &str {
        &self.cmdline[0]
    }
    pub fn args(&self) -> &[String] {
        &self.cmdline[1..]
    }
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running only).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RegistryFlags {
    /// Registry user (basic auth); also $FERRO_REGISTRY_USER.
    #[arg(long)]
    pub username: Option<String>,
    /// Registry password; also $FERRO_REGISTRY_PASSWORD.
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create and start a container.
    Run(RunFlags),
    /// Create a container without starting it.
    Create(RunFlags),
    /// Start stopped containers.
    Start { containers: Vec<String> },
    /// List containers.
    Ps(PsArgs),
    /// Run a command in a running container.
    Exec {
        #[arg(short = 'i', long)]
        interactive: bool,
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long = "tail", short = 'n')]
        tail: Option<String>,
        container: String,
    },
    /// Stop containers (stop signal, then SIGKILL after -t seconds).
    Stop {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        containers: Vec<String>,
    },
    /// Send a signal (default SIGKILL).
    Kill {
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        containers: Vec<String>,
    },
    /// Low-level JSON about containers or images.
    Inspect { objects: Vec<String> },
    /// Resource usage (cgroup statistics).
    Stats {
        #[arg(long = "no-stream")]
        no_stream: bool,
        containers: Vec<String>,
    },
    /// List images.
    Images(ImagesArgs),
    /// Remove images.
    Rmi {
        #[arg(short = 'f', long)]
        force: bool,
        images: Vec<String>,
    },
    /// Name an image: SOURCE TARGET.
    Tag { source: String, target: String },
    /// Pull an image from a registry.
    Pull {
        /// os/arch[/variant] (default linux/amd64).
        #[arg(long)]
        platform: Option<String>,
        #[arg(short = 'q', long)]
        quiet: bool,
        #[command(flatten)]
        auth: RegistryFlags,
        image: String,
    },
    /// Push an image to a registry.
    Push {
        #[command(flatten)]
        auth: RegistryFlags,
        image: String,
    },
    /// Load images from a docker-archive or OCI tarball.
    Load {
        #[arg(short = 'i', long = "input")]
        input: Option<PathBuf>,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Save images to a tarball (OCI layout + docker manifest.json).
    Save {
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        images: Vec<String>,
    },
    /// Build an image from a Dockerfile.
    Build(build::BuildArgs),
    /// Attach to a running -t container's terminal (detach: ctrl-p ctrl-q).
    Attach {
        /// Do not forward stdin.
        #[arg(long = "no-stdin")]
        no_stdin: bool,
        container: String,
    },
    #[command(name = "_monitor", hide = true)]
    Monitor {
        #[arg(long = "wait-attach")]
        wait_attach: bool,
        id: String,
    },
}

fn auth_from(f: &RegistryFlags) -> images::registry::Auth {
    let user = f
        .username
        .clone()
        .or_else(|| std::env::var("FERRO_REGISTRY_USER").ok());
    let pass = f
        .password
        .clone()
        .or_else(|| std::env::var("FERRO_REGISTRY_PASSWORD").ok());
    match (user, pass) {
        (Some(u), Some(p)) => images::registry::Auth::Basic(u, p),
        _ => match std::env::var("FERRO_REGISTRY_TOKEN") {
            Ok(t) => images::registry::Auth::Bearer(t),
            Err(_) => images::registry::Auth::Anonymous,
        },
    }
}

/// Credentials from the environment (for implicit pulls).
pub fn registry_auth() -> images::registry::Auth {
    auth_from(&RegistryFlags {
        username: None,
        password: None,
    })
}

/// Entry point for `ferro container …`.
pub fn main(a: ContainerArgs) -> i32 {
    match dispatch(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferro: {e:#}");
            125
        }
    }
}

/// `ferro ps`.
pub fn ps_main(a: PsArgs) -> i32 {
    main(ContainerArgs {
        root: None,
        runtime: None,
        cmd: ContainerCmd::Ps(a),
    })
}

/// `ferro images`.
pub fn images_main(a: ImagesArgs) -> i32 {
    main(ContainerArgs {
        root: None,
        runtime: None,
        cmd: ContainerCmd::Images(a),
    })
}

fn opts_from(f: &RunFlags) -> Result<CreateOpts> {
    let mut binds = Vec::new();
    for v in &f.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, ctr, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => bail!("invalid volume spec {v:?}: expected HOST:CONTAINER[:ro]"),
        };
        if !host.starts_with('/') || !ctr.starts_with('/') {
            bail!("invalid volume spec {v:?}: both paths must be absolute");
        }
        let host = std::fs::canonicalize(host)
            .with_context(|| format!("volume source {host} does not exist"))?;
        binds.push(container::Bind {
            host: host.display().to_string(),
            container: ctr.to_string(),
            readonly: ro,
        });
    }
    let ports = f
        .publish
        .iter()
        .map(|p| network::parse_port(p))
        .collect::<Result<Vec<_>>>()?;
    if let Some(c) = f.cpus {
        if c.is_nan() || c <= 0.0 {
            bail!("invalid --cpus {c}: must be positive");
        }
    }
    Ok(CreateOpts {
        name: f.name.clone(),
        image: f.image().to_string(),
        args: f.args().to_vec(),
        entrypoint: f.entrypoint.clone(),
        env: f.env.clone(),
        workdir: f.workdir.clone(),
        user: f.user.clone(),
        tty: f.tty,
        interactive: f.interactive,
        binds,
        ports,
        network: f.network.clone(),
        memory: f.memory.as_deref().map(container::parse_size).transpose()?,
        cpus: f.cpus,
        pids_limit: f.pids_limit,
        restart: f.restart.clone(),
        auto_remove: f.rm,
        hostname: f.hostname.clone(),
    })
}

fn ago(rfc: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match images::store::parse_rfc3339(rfc) {
        Some(t) => {
            let s = now.saturating_sub(t);
            if s < 60 {
                format!("{s} seconds")
            } else if s < 3600 {
                format!("{} minutes", s / 60)
            } else if s < 86400 {
                format!("{} hours", s / 3600)
            } else {
                format!("{} days", s / 86400)
            }
        }
        None => "?".into(),
    }
}

fn human_size(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.3}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.3}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.2}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}

fn status_text(c: &Container) -> String {
    match c.state.status.as_str() {
        "running" => format!("Up {}", ago(&c.state.started_at)),
        "exited" => format!(
            "Exited ({}) {} ago",
            c.state.exit_code,
            ago(&c.state.finished_at)
        ),
        // Between runs under a restart policy, as docker words it.
        "restarting" => format!(
            "Restarting ({}) {} ago",
            c.state.exit_code,
            ago(&c.state.finished_at)
        ),
        _ => "Created".into(),
    }
}

fn dispatch(a: ContainerArgs) -> Result<i32> {
    let eng = Engine::new(a.root.as_deref(), a.runtime.as_deref())?;
    match a.cmd {
        ContainerCmd::Monitor { id, wait_attach } => {
            let fd = monitor::inherited_notify_fd();
            let attach = if wait_attach {
                Some((monitor::inherited_attach_listener()?, true))
            } else {
                None
            };
            monitor::run_attachable(&eng, &id, false, fd, attach)
        }
        ContainerCmd::Attach {
            no_stdin,
            container,
        } => {
            let c = container::find(&eng, &container)?;
            attach::check_tty(c.config.tty, c.short_id())?;
            if !c.is_running() {
                bail!("You cannot attach to a stopped container, start it first");
            }
            attach::client(attach::connect(&c.dir(&eng))?, !no_stdin)
        }
        ContainerCmd::Run(f) => {
            let o = opts_from(&f)?;
            let c = lifecycle::create(&eng, &o)?;
            if f.detach {
                if let Err(e) = lifecycle::start(&eng, &c) {
                    if o.auto_remove {
                        let _ = lifecycle::remove_files(&eng, &c);
                    }
                    return Err(e);
                }
                println!("{}", c.id);
                return Ok(0);
            }
            let code = if f.tty {
                // The monitor owns the terminal; we are its first client.
                let s = match lifecycle::start_attached(&eng, &c) {
                    Ok(s) => s,
                    Err(e) => {
                        if o.auto_remove {
                            let _ = lifecycle::remove_files(&eng, &c);
                        }
                        return Err(e);
                    }
                };
                attach::client(s, f.interactive)?
            } else {
                match monitor::run(&eng, &c.id, true, None) {
                    Ok(code) => code,
                    Err(e) => {
                        if o.auto_remove {
                            let _ = lifecycle::remove_files(&eng, &c);
                        }
                        return Err(e);
                    }
                }
            };
            Ok(code)
        }
        ContainerCmd::Create(f) => {
            let c = lifecycle::create(&eng, &opts_from(&f)?)?;
            println!("{}", c.id);
            Ok(0)
        }
        ContainerCmd::Start { containers } => {
            for n in containers {
                let c = container::find(&eng, &n)?;
                lifecycle::start(&eng, &c)?;
                println!("{n}");
            }
            Ok(0)
        }
        ContainerCmd::Ps(p) => {
            let all = container::list(&eng)?;
            if !p.quiet {
                println!(
                    "{:<14}{:<24}{:<24}{:<16}{:<30}{:<24}NAMES",
                    "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
                );
            }
            for c in all.iter().filter(|c| p.all || c.is_running()) {
                if p.quiet {
                    println!("{}", c.short_id());
                    continue;
                }
                let mut cmd = format!("\"{}\"", c.config.args.join(" "));
                if cmd.len() > 22 {
                    cmd = format!(
                        "{}…\"",
                        &cmd[..cmd.char_indices().nth(19).map(|x| x.0).unwrap_or(19)]
                    );
                }
                let ports: Vec<String> = c
                    .config
                    .ports
                    .iter()
                    .map(|p| format!("0.0.0.0:{}->{}/{}", p.host, p.container, p.proto))
                    .collect();
                println!(
                    "{:<14}{:<24}{:<24}{:<16}{:<30}{:<24}{}",
                    c.short_id(),
                    c.config.image,
                    cmd,
                    format!("{} ago", ago(&c.created)),
                    status_text(c),
                    ports.join(", "),
                    c.name
                );
            }
            Ok(0)
        }
        ContainerCmd::Exec {
            interactive,
            tty,
            env,
            workdir,
            user,
            container,
            cmd,
        } => {
            let c = container::find(&eng, &container)?;
            if !c.is_running() {
                bail!("Container {} is not running", c.id);
            }
            let r = runtime::Runtime {
                argv: &c.config.runtime,
                root: &eng.runtime_root(),
            };
            let mut command = r.cmd();
            command.arg("exec");
            if tty {
                command.arg("--tty");
            }
            command
                .arg("--cwd")
                .arg(workdir.as_deref().unwrap_or(&c.config.workdir));
            for e in &c.config.env {
                command.arg("--env").arg(e);
            }
            for e in &env {
                command.arg("--env").arg(e);
            }
            let u = user.unwrap_or_else(|| c.config.user.clone());
            if !u.is_empty() {
                let (uid, gid) = container::resolve_user(&c.dir(&eng).join("rootfs"), &u)?;
                command.arg("--user").arg(format!("{uid}:{gid}"));
            }
            command.arg(&c.id).args(&cmd);
            if !interactive {
                command.stdin(std::process::Stdio::null());
            }
            let st = command.status().context("running the runtime's exec")?;
            Ok(st.code().unwrap_or(126))
        }
        ContainerCmd::Logs {
            follow,
            tail,
            container,
        } => {
            let c = container::find(&eng, &container)?;
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => Some(
                    n.parse::<usize>()
                        .with_context(|| format!("invalid --tail {n:?}"))?,
                ),
            };
            let id = c.id.clone();
            let e2 = eng.clone();
            logs::print(
                &c.dir(&eng).join("container.log"),
                tail,
                follow,
                move || {
                    Container::load(&e2, &id)
                        .map(|c| c.is_running())
                        .unwrap_or(false)
                },
            )?;
            Ok(0)
        }
        ContainerCmd::Stop { time, containers } => {
            for n in containers {
                let c = container::find(&eng, &n)?;
                lifecycle::stop(&eng, &c, Duration::from_secs(time))?;
                println!("{n}");
            }
            Ok(0)
        }
        ContainerCmd::Kill { signal, containers } => {
            let sig = if signal.starts_with("SIG") || signal.parse::<u32>().is_ok() {
                signal
            } else {
                format!("SIG{signal}")
            };
            for n in containers {
                let c = container::find(&eng, &n)?;
                lifecycle::kill(&eng, &c, &sig)?;
                println!("{n}");
            }
            Ok(0)
        }
        ContainerCmd::Rm { force, containers } => {
            let mut code = 0;
            for n in containers {
                match container::find(&eng, &n).and_then(|c| lifecycle::remove(&eng, &c, force)) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error response from daemon: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        ContainerCmd::Inspect { objects } => {
            let mut out = Vec::new();
            for o in &objects {
                if let Ok(c) = container::find(&eng, o) {
                    out.push(inspect_container(&eng, &c));
                    continue;
                }
                let store = eng.images()?;
                let img = store
                    .resolve(o)
                    .map_err(|_| anyhow::anyhow!("No such object: {o}"))?;
                out.push(serde_json::json!({
                    "Id": img.id.to_string(),
                    "RepoTags": store.list()?.iter().filter(|r| r.manifest == img.manifest_digest).map(|r| r.name.clone()).collect::<Vec<_>>(),
                    "RepoDigests": [img.manifest_digest.to_string()],
                    "Created": img.config.created,
                    "Architecture": img.config.architecture,
                    "Os": img.config.os,
                    "Config": img.config.config,
                    "RootFS": {"Type": "layers", "Layers": img.config.rootfs.diff_ids},
                    "Size": img.manifest.layers.iter().map(|l| l.size).sum::<u64>(),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        ContainerCmd::Stats {
            no_stream,
            containers,
        } => stats(&eng, no_stream, &containers),
        ContainerCmd::Images(a) => {
            let store = eng.images()?;
            let list = store.list()?;
            if !a.quiet {
                println!(
                    "{:<40}{:<12}{:<15}{:<16}SIZE",
                    "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
                );
            }
            for r in list {
                if a.quiet {
                    println!("{}", r.id.short());
                    continue;
                }
                let (repo, tag) = if r.name == "<none>:<none>" {
                    ("<none>".to_string(), "<none>".to_string())
                } else {
                    images::reference::split(&r.name)
                };
                let created = r
                    .created
                    .as_deref()
                    .map(|c| format!("{} ago", ago(c)))
                    .unwrap_or_default();
                println!(
                    "{:<40}{:<12}{:<15}{:<16}{}",
                    repo,
                    tag,
                    r.id.short(),
                    created,
                    human_size(r.size)
                );
            }
            Ok(0)
        }
        ContainerCmd::Rmi {
            force,
            images: names,
        } => {
            let store = eng.images()?;
            let mut code = 0;
            for n in names {
                let res = (|| -> Result<Vec<String>> {
                    let img = store.resolve(&n)?;
                    if !force {
                        if let Some(c) = container::list(&eng)?
                            .into_iter()
                            .find(|c| c.config.image_id == img.id.to_string())
                        {
                            bail!(
                                "conflict: unable to remove repository reference \"{n}\" (must force) - container {} is using its referenced image {}",
                                c.short_id(),
                                img.id.short()
                            );
                        }
                    }
                    Ok(store.remove(&n)?)
                })();
                match res {
                    Ok(names) => {
                        for x in names {
                            println!("Untagged: {x}");
                        }
                    }
                    Err(e) => {
                        eprintln!("Error response from daemon: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        ContainerCmd::Tag { source, target } => {
            let store = eng.images()?;
            let img = store.resolve(&source)?;
            store.tag(&target, &img.manifest_digest)?;
            Ok(0)
        }
        ContainerCmd::Pull {
            platform,
            quiet,
            auth,
            image,
        } => {
            let store = eng.images()?;
            let plat = match platform {
                Some(p) => images::registry::parse_platform(&p)?,
                None => images::registry::default_platform(),
            };
            let d = images::registry::pull(&store, &image, &plat, &auth_from(&auth), !quiet)?;
            if !quiet {
                println!("Digest: {d}");
                println!(
                    "Status: Downloaded newer image for {}",
                    images::reference::normalize(&image)
                );
            }
            println!("{}", images::reference::normalize(&image));
            Ok(0)
        }
        ContainerCmd::Push { auth, image } => {
            let store = eng.images()?;
            let d = images::registry::push(&store, &image, None, &auth_from(&auth))?;
            println!("{}: digest: {d}", images::reference::normalize(&image));
            Ok(0)
        }
        ContainerCmd::Load { input, quiet } => {
            let store = eng.images()?;
            let names = match input {
                Some(p) => {
                    let f = std::fs::File::open(&p)
                        .with_context(|| format!("opening {}", p.display()))?;
                    images::archive::load(&store, f)?
                }
                None => images::archive::load(&store, std::io::stdin().lock())?,
            };
            for n in names {
                if quiet {
                    continue;
                }
                if n.starts_with("sha256:") {
                    println!("Loaded image ID: {n}");
                } else {
                    println!("Loaded image: {n}");
                }
            }
            Ok(0)
        }
        ContainerCmd::Save {
            output,
            images: names,
        } => {
            if names.is_empty() {
                bail!("save needs at least one image");
            }
            let store = eng.images()?;
            match output {
                Some(p) => {
                    let tmp = p.with_extension("partial");
                    let f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let f = images::archive::save(&store, &names, std::io::BufWriter::new(f))?;
                    drop(f);
                    std::fs::rename(&tmp, &p)?;
                }
                None => {
                    use std::io::IsTerminal;
                    if std::io::stdout().is_terminal() {
                        bail!(
                            "refusing to write an archive to a terminal; use -o FILE or redirect"
                        );
                    }
                    let _ = images::archive::save(&store, &names, std::io::stdout().lock())?;
                }
            }
            Ok(0)
        }
        ContainerCmd::Build(b) => build::main(&eng, &b),
    }
}

fn inspect_container(eng: &Engine, c: &Container) -> serde_json::Value {
    let mut ports = serde_json::Map::new();
    for p in &c.config.ports {
        ports.insert(
            format!("{}/{}", p.container, p.proto),
            serde_json::json!([{"HostIp": "0.0.0.0", "HostPort": p.host.to_string()}]),
        );
    }
    serde_json::json!({
        "Id": c.id,
        "Created": c.created,
        "Path": c.config.args.first(),
        "Args": c.config.args.get(1..).unwrap_or(&[]),
        "State": {
            "Status": c.state.status,
            "Running": c.is_running(),
            "Pid": c.state.pid,
            "ExitCode": c.state.exit_code,
            "OOMKilled": c.state.oom_killed,
            "Error": c.state.error,
            "StartedAt": c.state.started_at,
            "FinishedAt": c.state.finished_at,
        },
        "Image": c.config.image_id,
        "Name": format!("/{}", c.name),
        "RestartCount": c.state.restart_count,
        "LogPath": c.dir(eng).join("container.log"),
        "HostConfig": {
            "Binds": c.config.binds.iter().map(|b| format!("{}:{}{}", b.host, b.container, if b.readonly {":ro"} else {""})).collect::<Vec<_>>(),
            "NetworkMode": c.config.network,
            "RestartPolicy": {"Name": c.config.restart},
            "AutoRemove": c.config.auto_remove,
            "Memory": c.config.memory.unwrap_or(0),
            "NanoCpus": c.config.cpus.map(|x| (x * 1e9) as i64).unwrap_or(0),
            "PidsLimit": c.config.pids_limit,
            "Runtime": c.config.runtime.join(" "),
        },
        "Config": {
            "Hostname": c.config.hostname,
            "User": c.config.user,
            "Env": c.config.env,
            "Cmd": c.config.args,
            "Image": c.config.image,
            "WorkingDir": c.config.workdir,
            "Tty": c.config.tty,
            "OpenStdin": c.config.interactive,
        },
        "NetworkSettings": {
            "IPAddress": c.ip,
            "Gateway": if c.ip.is_empty() { "" } else { network::GATEWAY },
            "Ports": ports,
        },
    })
}

fn read_num(p: &str) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// cgroup usage of a container: (cpu ns, mem usage, mem limit, pids).
pub fn cgroup_stats(c: &Container) -> (u64, u64, u64, u64) {
    let cg = c.cgroup_path();
    let v1 = format!("/sys/fs/cgroup/memory{cg}");
    if std::path::Path::new(&v1).exists() {
        let cpu = read_num(&format!("/sys/fs/cgroup/cpuacct{cg}/cpuacct.usage")).unwrap_or(0);
        let mem = read_num(&format!("{v1}/memory.usage_in_bytes")).unwrap_or(0);
        let lim = read_num(&format!("{v1}/memory.limit_in_bytes")).unwrap_or(0);
        let pids = read_num(&format!("/sys/fs/cgroup/pids{cg}/pids.current")).unwrap_or(0);
        return (cpu, mem, lim, pids);
    }
    let v2 = format!("/sys/fs/cgroup{cg}");
    let cpu = std::fs::read_to_string(format!("{v2}/cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1000;
    let mem = read_num(&format!("{v2}/memory.current")).unwrap_or(0);
    let lim = read_num(&format!("{v2}/memory.max")).unwrap_or(u64::MAX);
    let pids = read_num(&format!("{v2}/pids.current")).unwrap_or(0);
    (cpu, mem, lim, pids)
}

fn stats(eng: &Engine, no_stream: bool, names: &[String]) -> Result<i32> {
    loop {
        let cs: Vec<Container> = if names.is_empty() {
            container::list(eng)?
                .into_iter()
                .filter(|c| c.is_running())
                .collect()
        } else {
            names
                .iter()
                .map(|n| container::find(eng, n))
                .collect::<Result<_>>()?
        };
        let before: Vec<_> = cs.iter().map(cgroup_stats).collect();
        let t0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let dt = t0.elapsed().as_nanos() as f64;
        println!(
            "{:<14}{:<22}{:<9}{:<24}{:<9}PIDS",
            "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %"
        );
        for (c, b) in cs.iter().zip(before) {
            let (cpu, mem, lim, pids) = cgroup_stats(c);
            let cpu_pct = (cpu.saturating_sub(b.0)) as f64 / dt * 100.0;
            let host_mem = 24u64 << 30;
            let lim = if lim == 0 || lim > (1u64 << 62) {
                host_mem
            } else {
                lim
            };
            println!(
                "{:<14}{:<22}{:<9}{:<24}{:<9}{}",
                c.short_id(),
                c.name,
                format!("{cpu_pct:.2}%"),
                format!("{} / {}", human_size(mem), human_size(lim)),
                format!("{:.2}%", mem as f64 / lim as f64 * 100.0),
                pids
            );
        }
        if no_stream {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_status_words() {
        let mut c = Container::default();
        assert_eq!(status_text(&c), "Created");
        c.state.status = "restarting".into();
        c.state.exit_code = 1;
        assert!(
            status_text(&c).starts_with("Restarting (1) "),
            "{}",
            status_text(&c)
        );
        c.state.status = "exited".into();
        assert!(status_text(&c).starts_with("Exited (1) "));
    }
}
