//! `ferrod`, Ferrovisor's management daemon (`ferro daemon`, or the binary
//! invoked as `ferrod`), and `ferro vm`, its command-line client.
//!
//! - [`spec`]: declarative VM definitions (TOML/JSON) → `ferro run` flags;
//! - [`store`]: definitions and run records in SQLite;
//! - [`supervisor`]: one `ferro run` per VM, states, restarts, re-attach;
//! - [`containers`]: containers (the engine's, as a library) through the
//!   API, and their supervision when the daemon runs;
//! - [`api`]: the REST API and its OpenAPI document; [`events`]: events, tasks;
//! - [`client`] and [`cli`]: `ferro vm`.
//!
//! Dependencies: `rusqlite` (bundled SQLite: transactions and WAL give
//! crash-safe definitions with no system library to match), `axum` + `tokio`
//! (the HTTP API over a Unix socket and TCP, SSE for events, async process
//! supervision), `tokio-stream`/`futures-util` (the SSE stream), `toml` and
//! `serde_path_to_error` (definitions, and errors that name the field),
//! `uuid` (VM identities), `engine` and `images` (containers: the same code
//! and state as `ferro container`).

pub mod api;
pub mod cli;
pub mod client;
pub mod containers;
pub mod events;
pub mod spec;
pub mod store;
pub mod supervisor;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `ferro daemon` / `ferrod` arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Where definitions, VM files and containers live (default: $FERRO_ROOT,
    /// else /var/lib/ferrovisor as root, $XDG_DATA_HOME/ferrovisor otherwise;
    /// the same root as `ferro container`).
    #[arg(long, env = "FERROD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The API's Unix socket (default: ferrod.sock in the run dir).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also serve the API on TCP at ADDR:PORT (needs --token-file).
    #[arg(long, value_name = "ADDR:PORT", requires = "token_file")]
    pub listen_tcp: Option<String>,
    /// File holding the bearer token TCP clients must send.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The VMM program to run per VM (default: this binary's `run`).
    #[arg(long, value_name = "PROGRAM")]
    pub vmm: Option<PathBuf>,
    /// Seconds `shutdown` waits for the guest before destroying it.
    #[arg(long, default_value_t = 60)]
    pub shutdown_timeout: u64,
}

/// The state dir and run dir for these arguments: the engine's
/// [`engine::paths::state_dirs`], so `ferro container` and the daemon share
/// one state root. The run dir (sockets, pid files, the once-per-boot
/// autostart marker) is on tmpfs where there is one (/run as root,
/// $XDG_RUNTIME_DIR), else under the state dir; with an explicit state dir
/// (or $FERRO_ROOT) it is always `STATE/run`, so instances stay apart.
pub fn dirs(state_dir: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    engine::paths::state_dirs(state_dir)
}

/// Default API socket for a state dir.
pub fn default_socket(state_dir: Option<&Path>) -> Result<PathBuf> {
    Ok(dirs(state_dir)?.1.join("ferrod.sock"))
}

/// Runs the daemon until SIGTERM/SIGINT. VMs keep running when it exits.
pub fn daemon_main(args: DaemonArgs) -> Result<i32> {
    let (state_dir, run_dir) = dirs(args.state_dir.as_deref())?;
    supervisor::private_dir(&state_dir)?;
    supervisor::private_dir(&run_dir)?;
    // One daemon per state dir.
    let lock_path = state_dir.join("ferrod.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // A VMM forked by a daemon that was just killed holds the (close-on-
    // exec) lock until its exec: give it a moment before giving up.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    // SAFETY: flock on an fd we own for the life of the process.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() > deadline {
            bail!(
                "another ferrod is already running on {}",
                state_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let store = store::Store::open(&state_dir.join("ferrod.db"))?;
    let vmm: Vec<OsString> = match &args.vmm {
        Some(p) => vec![p.into()],
        None => vec![
            std::env::current_exe()
                .context("cannot find this program to run VMs")?
                .into(),
            "run".into(),
        ],
    };
    let cfg = supervisor::Config {
        state_dir: state_dir.clone(),
        run_dir: run_dir.clone(),
        vmm,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
        )
        .filter(|t| !t.is_empty())
        .with_context(|| format!("the token file {} is empty", f.display()))
        .map(Some)?,
        None => None,
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| run_dir.join("ferrod.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sup = supervisor::Supervisor::new(cfg, store);
        sup.recover().await?;
        // Containers: settle what happened while no daemon ran, then watch.
        sup.containers.recover().await;
        sup.containers.supervise();
        let _ = std::fs::remove_file(&socket);
        let ul = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let app = api::router(sup.clone());
        if let (Some(addr), Some(token)) = (&args.listen_tcp, token) {
            let tl = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let tapp = api::with_token(app.clone(), token);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tl, tapp).await {
                    tracing::error!("TCP API: {e}");
                }
            });
        }
        eprintln!("ferrod: listening on {}", socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = axum::serve(ul, app) => r.context("API server")?,
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(lock);
    Ok(0)
}

pub use cli::{vm_main, VmArgs};
