//! Container lifecycle: create (rootfs overlay, network, bundle), start,
//! stop, kill, remove.

use crate::container::{self, Bind, Container, Port, RunConfig, Status};
use crate::paths::Engine;
use crate::runtime::Runtime;
use crate::{monitor, network, spec};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct CreateOpts {
    pub name: Option<String>,
    pub image: String,
    pub args: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub binds: Vec<Bind>,
    pub ports: Vec<Port>,
    pub network: String,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub restart: String,
    pub auto_remove: bool,
    pub hostname: Option<String>,
}

struct NameLock(fs::File);
impl Drop for NameLock {
    fn drop(&mut self) {
        // SAFETY: valid fd owned by self.0.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn name_lock(eng: &Engine) -> Result<NameLock> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(eng.root.join("containers.lock"))?;
    // SAFETY: valid fd owned by f.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    Ok(NameLock(f))
}

fn valid_name(n: &str) -> bool {
    let mut ch = n.chars();
    ch.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && ch.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn merge_env(image: &[String], user: &[String]) -> Vec<String> {
    let mut out: Vec<String> = image.to_vec();
    for e in user {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(e) {
                Ok(v) => (e.clone(), v),
                Err(_) => continue,
            },
        };
        out.retain(|x| x.split_once('=').map(|(a, _)| a) != Some(k.as_str()) && x != &k);
        out.push(format!("{k}={v}"));
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

/// mkdir -p `rel` under `root` without following symlinks out of it (a
/// symlinked component is left for the runtime to resolve in the container).
pub fn mkdir_in(root: &Path, rel: &str) -> Result<()> {
    let mut cur = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => {
                cur.push(n);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(()),
                    Err(_) => fs::create_dir(&cur)
                        .with_context(|| format!("creating {}", cur.display()))?,
                }
            }
            Component::ParentDir => bail!("path {rel:?} contains '..'"),
            _ => {}
        }
    }
    Ok(())
}

pub fn create(eng: &Engine, o: &CreateOpts) -> Result<Container> {
    let store = eng.images()?;
    let img = match store.resolve(&o.image) {
        Ok(i) => i,
        Err(images::Error::NoSuchImage(_)) => {
            eprintln!("Unable to find image '{}' locally", o.image);
            images::registry::pull(
                &store,
                &o.image,
                &images::registry::default_platform(),
                &crate::registry_auth(),
                true,
            )?;
            store.resolve(&o.image)?
        }
        Err(e) => return Err(e.into()),
    };
    let layers = store.layer_dirs(&img)?;
    let ic = &img.config.config;
    let args = spec::command(
        ic.entrypoint.as_deref().unwrap_or(&[]),
        ic.cmd.as_deref().unwrap_or(&[]),
        o.entrypoint.as_deref(),
        &o.args,
    );
    if args.is_empty() {
        bail!("no command specified");
    }
    let id = container::random_id()?;
    let mut env = merge_env(ic.env.as_deref().unwrap_or(&[]), &o.env);
    let hostname = o.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    env.push(format!("HOSTNAME={hostname}"));
    if o.tty {
        env.push("TERM=xterm".into());
    }
    let network = if o.network.is_empty() {
        "bridge".to_string()
    } else {
        o.network.clone()
    };
    if !["bridge", "host", "none"].contains(&network.as_str()) {
        bail!("network {network} not found (use bridge, host or none)");
    }
    if network != "bridge" && !o.ports.is_empty() {
        bail!("-p needs the bridge network");
    }
    let restart = if o.restart.is_empty() {
        "no".to_string()
    } else {
        o.restart.clone()
    };
    if !monitor::valid_restart(&restart) {
        bail!("invalid restart policy {restart:?}");
    }
    if o.auto_remove && restart != "no" {
        bail!("conflicting options: --restart and --rm");
    }
    let mut c = {
        let _l = name_lock(eng)?;
        let name = match &o.name {
            Some(n) => {
                if !valid_name(n) {
                    bail!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    );
                }
                if let Some(other) = container::list(eng)?.into_iter().find(|c| &c.name == n) {
                    bail!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{}\"",
                        other.id
                    );
                }
                n.clone()
            }
            None => format!("ferro_{}", &id[..8]),
        };
        let c = Container {
            id: id.clone(),
            name,
            created: images::store::now_rfc3339(),
            config: RunConfig {
                image: o.image.clone(),
                image_id: img.id.to_string(),
                args,
                env,
                workdir: o
                    .workdir
                    .clone()
                    .or_else(|| ic.working_dir.clone().filter(|w| !w.is_empty()))
                    .unwrap_or_else(|| "/".into()),
                user: o
                    .user
                    .clone()
                    .or_else(|| ic.user.clone())
                    .unwrap_or_default(),
                tty: o.tty,
                interactive: o.interactive,
                binds: o.binds.clone(),
                ports: o.ports.clone(),
                network,
                memory: o.memory,
                cpus: o.cpus,
                pids_limit: o.pids_limit,
                restart,
                auto_remove: o.auto_remove,
                hostname,
                runtime: eng.runtime.clone(),
                stop_signal: ic.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into()),
                layers,
            },
            state: Status {
                status: "created".into(),
                ..Default::default()
            },
            ip: String::new(),
        };
        fs::create_dir(c.dir(eng)).context("creating the container directory")?;
        c.save(eng)?;
        c
    };
    if let Err(e) = prepare(eng, &mut c) {
        let _ = remove_files(eng, &c);
        return Err(e);
    }
    Ok(c)
}

/// Mounts the rootfs, sets up the network and writes config.json.
fn prepare(eng: &Engine, c: &mut Container) -> Result<()> {
    let dir = c.dir(eng);
    for d in ["upper", "work", "rootfs", "empty"] {
        fs::create_dir_all(dir.join(d))?;
    }
    // Freshly created: not mounted yet (skips a /proc/self/mountinfo scan).
    mount_overlay(eng, c)?;
    let rootfs = dir.join("rootfs");
    let netns = match c.config.network.as_str() {
        "bridge" => {
            network::setup_bridge(eng, c)?;
            Some(network::netns_path(c))
        }
        _ => None,
    };
    let ipline = if c.ip.is_empty() {
        String::new()
    } else {
        format!("{}\t{}\n", c.ip, c.config.hostname)
    };
    fs::write(
        dir.join("hosts"),
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ipline}"),
    )?;
    fs::write(dir.join("hostname"), format!("{}\n", c.config.hostname))?;
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    fs::write(dir.join("resolv.conf"), resolv)?;
    let (uid, gid) = container::resolve_user(&rootfs, &c.config.user)?;
    mkdir_in(&rootfs, &c.config.workdir)?;
    let spec = spec::build(c, &dir, netns.as_deref(), uid, gid)?;
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

pub fn mount_rootfs(eng: &Engine, c: &Container) -> Result<()> {
    let dir = c.dir(eng);
    let rootfs = dir.join("rootfs");
    if images::mount::is_mounted(&rootfs) {
        return Ok(());
    }
    mount_overlay(eng, c)
}

fn mount_overlay(eng: &Engine, c: &Container) -> Result<()> {
    let dir = c.dir(eng);
    // A --rm container's upper dir is thrown away: no need for overlay to
    // sync the host filesystem at unmount (tens of ms on a busy disk).
    images::mount::mount_overlay_opts(
        &c.config.layers,
        &dir.join("upper"),
        &dir.join("work"),
        &dir.join("rootfs"),
        &dir.join("empty"),
        c.config.auto_remove,
    )?;
    Ok(())
}

/// Starts a created or exited container under a detached monitor.
pub fn start(eng: &Engine, c: &Container) -> Result<()> {
    if c.is_running() {
        return Ok(());
    }
    mount_rootfs(eng, c)?;
    monitor::spawn_detached(eng, c)?;
    Ok(())
}

/// Starts a -t container whose terminal we attach to from the first byte:
/// binds its attach socket, queues our connection, then starts the monitor,
/// which serves that connection before starting the container.
pub fn start_attached(eng: &Engine, c: &Container) -> Result<std::os::unix::net::UnixStream> {
    mount_rootfs(eng, c)?;
    let dir = c.dir(eng);
    let l = crate::attach::bind(&dir)?;
    let s = crate::attach::connect(&dir)?;
    monitor::spawn_detached_attach(eng, c, Some(l))?;
    Ok(s)
}

fn rt(eng: &Engine, c: &Container) -> (Vec<String>, PathBuf) {
    (c.config.runtime.clone(), eng.runtime_root())
}

pub fn kill(eng: &Engine, c: &Container, signal: &str) -> Result<()> {
    if !c.is_running() {
        bail!("Container {} is not running", c.short_id());
    }
    let (argv, root) = rt(eng, c);
    Runtime {
        argv: &argv,
        root: &root,
    }
    .kill(&c.id, signal)
}

/// Docker `stop`: the stop signal, then SIGKILL after `timeout`.
pub fn stop(eng: &Engine, c: &Container, timeout: Duration) -> Result<()> {
    fs::write(monitor::stop_marker(eng, c), b"")?;
    if !c.is_running() {
        return Ok(());
    }
    let (argv, root) = rt(eng, c);
    let r = Runtime {
        argv: &argv,
        root: &root,
    };
    let _ = r.kill(&c.id, &c.config.stop_signal);
    match monitor::wait_exited(eng, &c.id, timeout) {
        Ok(_) => return Ok(()),
        Err(_) if !c.dir(eng).exists() => return Ok(()),
        Err(_) => {}
    }
    let _ = r.kill(&c.id, "SIGKILL");
    match monitor::wait_exited(eng, &c.id, Duration::from_secs(20)) {
        Ok(_) => Ok(()),
        Err(_) if !c.dir(eng).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn remove(eng: &Engine, c: &Container, force: bool) -> Result<()> {
    if c.is_running() {
        if !force {
            bail!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                c.id
            );
        }
        fs::write(monitor::stop_marker(eng, c), b"")?;
        let (argv, root) = rt(eng, c);
        let _ = Runtime {
            argv: &argv,
            root: &root,
        }
        .kill(&c.id, "SIGKILL");
        let _ = monitor::wait_exited(eng, &c.id, Duration::from_secs(20));
        if !c.dir(eng).exists() {
            return Ok(());
        }
    }
    remove_files(eng, c)
}

/// Tears down everything the container owns (idempotent).
pub fn remove_files(eng: &Engine, c: &Container) -> Result<()> {
    let (argv, root) = rt(eng, c);
    // Usually the monitor already deleted it (then this costs no call).
    let _ = Runtime {
        argv: &argv,
        root: &root,
    }
    .delete(&c.id);
    network::teardown(c);
    let dir = c.dir(eng);
    images::mount::unmount(&dir.join("rootfs"))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
