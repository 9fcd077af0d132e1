//! `ums`: the UMS coordinator daemon (`ums coordinator`) and its client (`ums migrate`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use log::{info, warn, LevelFilter};

use ums_coordinator::client::{self, MigrateOptions};
use ums_coordinator::coordinator::read_token_file;
use ums_coordinator::http::HttpClient;
use ums_coordinator::refs::PeerUrl;
use ums_coordinator::spec::validate_cgroup_parent;
use ums_coordinator::{logger, server, Config, Coordinator};

#[derive(Parser)]
#[command(
    name = "ums",
    version,
    about = "Live migration of containerized services between two systems",
    long_about = "Live migration of containerized services between two systems.\n\n\
        Each system runs `ums coordinator` next to its containerd. `ums migrate` asks the \
        source system's coordinator to move a running container (started through the ums \
        runtime, io.containerd.ums.v1) to the destination system; the coordinators do the rest."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-system coordinator daemon (HTTP/JSON API).
    Coordinator(CoordinatorArgs),
    /// Migrate a running container from one system to another.
    Migrate(MigrateArgs),
    /// List the migrations a coordinator knows (JSON).
    List(ListArgs),
}

#[derive(clap::Args)]
struct CoordinatorArgs {
    /// Address to serve the API on, IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// containerd's gRPC socket.
    #[arg(long, value_name = "SOCK")]
    containerd: PathBuf,
    /// containerd's state directory (where the task bundles and the shims' migration
    /// addresses are).
    #[arg(long, value_name = "DIR")]
    containerd_state: PathBuf,
    /// This system's name (in reports, errors and logs).
    #[arg(long)]
    name: String,
    /// File holding the secret shared with the peer coordinators (sent and required as a
    /// bearer token on coordinator-to-coordinator calls).
    #[arg(long, value_name = "FILE")]
    peer_token_file: Option<PathBuf>,
    /// Directory for the coordinator's files (logs of restored services).
    /// [default: /run/ums/coordinator/NAME]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// IP the destination shim listens on for image streams [default: the --listen IP].
    #[arg(long, value_name = "IP")]
    advertise_ip: Option<IpAddr>,
    /// Longest a source checkpoint + transfer may take, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    dump_timeout: u64,
    /// A prepared destination container that the source neither restores nor aborts within
    /// this many seconds is removed.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    incoming_timeout: u64,
    /// Refuse incoming image streams larger than this many bytes (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    max_stream_bytes: u64,
    /// Cgroup parent of the ctr-style containers this coordinator recreates:
    /// PARENT/NS/NAME instead of /NS/NAME. For systems that share one cgroup hierarchy (two
    /// systems on one host), so that a container and its migrated copy never share a cgroup.
    #[arg(long, value_name = "PATH", default_value = "")]
    cgroup_parent: String,
    /// Directory the destination shims receive image streams in (DIR/in-MIGRATION); default:
    /// the task's bundle under --containerd-state (often a tmpfs).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", env = "UMS_LOG")]
    log_level: LevelFilter,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The source system's coordinator, http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The destination system's coordinator, http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    to: String,
    /// The container on the source system, NAMESPACE/NAME (e.g. default/web1).
    #[arg(value_name = "NS/NAME")]
    container: String,
    /// Print one JSON object with the outcome and phase timings on stdout.
    #[arg(long)]
    json: bool,
    /// Stop following the migration after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
    /// Send this file's token as a bearer token.
    #[arg(long, value_name = "FILE", env = "UMS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    /// The coordinator, http://HOST:PORT.
    #[arg(value_name = "URL")]
    at: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ums: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Command::Coordinator(a) => run_coordinator(a).await,
            Command::Migrate(a) => run_migrate(a).await,
            Command::List(a) => run_list(a).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ums: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_coordinator(a: CoordinatorArgs) -> Result<()> {
    logger::init(a.log_level);
    let mut cfg = Config::new(&a.name, a.listen, a.containerd, a.containerd_state);
    if let Some(d) = a.state_dir {
        cfg.state_dir = d;
    }
    cfg.advertise_ip = a.advertise_ip;
    cfg.dump_timeout = Duration::from_secs(a.dump_timeout);
    cfg.incoming_timeout = Duration::from_secs(a.incoming_timeout);
    cfg.max_stream_bytes = a.max_stream_bytes;
    cfg.cgroup_parent = validate_cgroup_parent(&a.cgroup_parent).context("--cgroup-parent")?;
    if let Some(d) = a.image_dir.as_ref().filter(|d| !d.is_absolute()) {
        anyhow::bail!("--image-dir {} must be an absolute path", d.display());
    }
    cfg.image_dir = a.image_dir;
    match &a.peer_token_file {
        Some(f) => cfg.peer_token = Some(read_token_file(f).context("--peer-token-file")?),
        None => warn!("no --peer-token-file: peer calls are not authenticated"),
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state dir {}", cfg.state_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    info!(
        "ums coordinator {} {} on http://{} (containerd {}, state {}, files {})",
        cfg.name,
        env!("CARGO_PKG_VERSION"),
        listener.local_addr().unwrap_or(cfg.listen),
        cfg.containerd_socket.display(),
        cfg.containerd_state.display(),
        cfg.state_dir.display()
    );
    let coordinator = Coordinator::new(cfg);
    match coordinator.sweep_stale_incoming().await {
        Ok(0) => {}
        Ok(n) => info!("removed {n} destination container(s) left by an earlier run"),
        Err(e) => warn!("could not look for containers left by an earlier run: {e}"),
    }
    let n = coordinator.recover().await;
    if n > 0 {
        info!("ending {n} migration(s) an earlier run left in flight");
    }
    server::serve(coordinator, listener, shutdown_signal())
        .await
        .context("serving the API")?;
    info!("ums coordinator stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => info!("SIGTERM: shutting down"),
                _ = i.recv() => info!("SIGINT: shutting down"),
            }
        }
        _ => {
            warn!("cannot watch for signals; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

async fn run_migrate(a: MigrateArgs) -> Result<()> {
    let mut opts = MigrateOptions::new(&a.from, &a.to, &a.container);
    opts.timeout = Duration::from_secs(a.timeout);
    if let Some(f) = &a.token_file {
        opts.token = Some(read_token_file(f).context("--token-file")?);
    }
    let quiet = a.quiet;
    let report = client::migrate(&opts, |p| {
        if !quiet {
            eprintln!("{}", p.line());
        }
    })
    .await
    .with_context(|| format!("migrating {} from {} to {}", a.container, a.from, a.to))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

async fn run_list(a: ListArgs) -> Result<()> {
    let at = PeerUrl::parse(&a.at)?;
    let v: serde_json::Value = HttpClient::new(None)
        .get(&at.join("/v1/migrations"), Duration::from_secs(10))
        .await
        .with_context(|| format!("listing the migrations at {at}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&v).context("encoding the list")?
    );
    Ok(())
}
