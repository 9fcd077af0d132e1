//! `ums`: the UMS coordinator daemon (`ums coordinator`) and its client (`ums migrate`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use log::{info, warn, LevelFilter};

use ums_coordinator::api::{DestInterface, Placement};
use ums_coordinator::approach::{Approach, Capabilities};
use ums_coordinator::client::{self, MigrateOptions};
use ums_coordinator::coordinator::read_token_file;
use ums_coordinator::expose::{self, EndpointOptions, ExposeRequest, Mode};
use ums_coordinator::http::HttpClient;
use ums_coordinator::refs::PeerUrl;
use ums_coordinator::spec::validate_cgroup_parent;
use ums_coordinator::{logger, server, status, tls, Config, Coordinator};

#[derive(Parser)]
#[command(
    name = "ums",
    version,
    about = "Live migration of containerized services between two systems",
    long_about = "Live migration of containerized services between two systems.\n\n\
        Each system runs `ums coordinator` next to its containerd. `ums migrate` asks the \
        source system's coordinator to move a running container to the destination system; \
        the coordinators do the rest: container-level for the ums runtime \
        (io.containerd.ums.v1), orchestrator-level (containerd's own checkpoint/restore) for \
        containerd's runc runtime (io.containerd.runc.v2); `ums migrate --dry-run` tells which."
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
    /// List the migrations a coordinator knows: approach, state, phase, bytes, timings.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// A coordinator's state and running migrations, or one migration in detail.
    Status(StatusArgs),
    /// Publish a container's service on a stable endpoint of its system (the Frontman), which
    /// follows the service when it migrates; without NS/NAME: list the endpoints (JSON).
    Expose(ExposeArgs),
    /// Remove an endpoint made by `ums expose` (or by a migration).
    Unexpose(UnexposeArgs),
}

/// How a client reaches a coordinator.
#[derive(clap::Args)]
struct ClientArgs {
    /// Send this file's token as a bearer token (the coordinators' --peer-token-file).
    #[arg(long, value_name = "FILE", env = "UMS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinators' certificates, for https:// URLs.
    #[arg(long, value_name = "FILE", env = "UMS_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    fn token(&self) -> Result<Option<String>> {
        self.token_file
            .as_deref()
            .map(|f| read_token_file(f).context("--token-file"))
            .transpose()
    }

    fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        self.tls_ca
            .as_deref()
            .map(|f| tls::client_config(f).context("--tls-ca"))
            .transpose()
    }

    fn http(&self) -> Result<HttpClient> {
        Ok(HttpClient::with_tls(self.token()?, self.tls()?))
    }
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
    /// File holding the secret shared with the peer coordinators and the clients (sent on
    /// calls to peers; required as a bearer token on every /v1 endpoint).
    #[arg(long, value_name = "FILE")]
    peer_token_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate (PEM, chain first; needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the peers' certificates: https:// peers are verified
    /// against it (without it, only http:// peers can be reached).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
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
    /// Refuse incoming image streams larger than this many bytes (0: no limit); the memory
    /// pages that pre-copy sends beside the stream are held to it too.
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
    /// The source system's coordinator, http(s)://HOST:PORT.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The destination system's coordinator, http(s)://HOST:PORT.
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
    #[command(flatten)]
    client: ClientArgs,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// The destination's interface for the new container: cri (a pod sandbox with runtime
    /// handler ums and a container in it, as kubelet would) or containerd (a plain container).
    /// [default: cri for a CRI container when the destination serves CRI, else containerd]
    #[arg(long, value_name = "cri|containerd")]
    to_interface: Option<DestInterface>,
    /// cri: the namespace of the pod created at the destination [default: the source pod's].
    #[arg(long, value_name = "NS")]
    pod_namespace: Option<String>,
    /// cri: the name of the pod created at the destination [default: the source pod's].
    #[arg(long, value_name = "NAME")]
    pod_name: Option<String>,
    /// The service's stable endpoint on the destination, IP:PORT [default: the source
    /// endpoint's port on the destination's address].
    #[arg(long, value_name = "IP:PORT")]
    endpoint_listen: Option<String>,
    /// The service's address on the destination, IP:PORT [default: the source endpoint's
    /// target, with the source system's address replaced by the destination's].
    #[arg(long, value_name = "IP:PORT")]
    endpoint_target: Option<String>,
    /// The destination endpoint's mode [default: the source endpoint's, else tcp].
    #[arg(long, value_name = "tcp|http")]
    endpoint_mode: Option<Mode>,
    /// Only say which approach would migrate the container and why the others cannot
    /// (exit status 1 if none can); nothing is touched.
    #[arg(long)]
    dry_run: bool,
    /// Use this approach (container, orchestrator, service); refused before anything is
    /// touched if it cannot migrate the container. Default: the first feasible one.
    #[arg(long, value_name = "APPROACH", value_parser = parse_approach)]
    approach: Option<Approach>,
    /// Post-copy (CRIU lazy pages; container-level only): restart the service at the
    /// destination before its memory arrives; it fetches its pages from the source, which
    /// stays frozen until the last page is in (and resumes if the transfer fails). Shortens
    /// the downtime of a large service to about that of an empty one.
    #[arg(long)]
    post_copy: bool,
    /// With --post-copy: keep the restored service frozen at the destination until its last
    /// page is in, then thaw it. It runs nowhere with memory missing, so, as without
    /// --post-copy, a failure resumes it at the source with nothing lost; the downtime is
    /// the page transfer's, overlapped with the restore.
    #[arg(long, requires = "post_copy")]
    hold: bool,
}

fn parse_approach(s: &str) -> std::result::Result<Approach, String> {
    Approach::parse(s).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
struct ExposeArgs {
    /// The coordinator of the container's system, http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// The container, NAMESPACE/NAME; without it the endpoints are listed.
    #[arg(value_name = "NS/NAME", requires_all = ["listen", "target"])]
    container: Option<String>,
    /// The stable endpoint.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// The service's address on this system.
    #[arg(long, value_name = "IP:PORT")]
    target: Option<String>,
    /// While the service is frozen: tcp holds new connections, http answers 503 with
    /// Retry-After.
    #[arg(long, value_name = "tcp|http", default_value = "tcp")]
    mode: Mode,
    /// TCP mode: the longest a connection is held, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    hold_timeout: u64,
    /// Before the freeze: the longest open connections may take to end (then cut), seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    drain_timeout: u64,
    /// After the service moved: how long this endpoint forwards to the new one, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    grace: u64,
    /// HTTP mode: the Retry-After of the 503 answers, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    retry_after: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args)]
struct UnexposeArgs {
    /// The coordinator of the endpoint's system, http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// The endpoint's id, or its container's NAMESPACE/NAME.
    #[arg(value_name = "ID|NS/NAME")]
    which: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args)]
struct LsArgs {
    /// The coordinator, http(s)://HOST:PORT.
    #[arg(long, value_name = "URL", env = "UMS_URL")]
    at: String,
    /// Print the records as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A migration id (`m-...`); without it, the coordinator's state.
    #[arg(value_name = "ID")]
    id: Option<String>,
    /// The coordinator, http(s)://HOST:PORT.
    #[arg(long, value_name = "URL", env = "UMS_URL")]
    at: String,
    /// Print JSON (the record, or {health, migrations}).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
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
            Command::Ls(a) => run_ls(a).await,
            Command::Status(a) => run_status(a).await,
            Command::Expose(a) => run_expose(a).await,
            Command::Unexpose(a) => run_unexpose(a).await,
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
    if let Some(f) = &a.tls_ca {
        cfg.peer_tls = Some(tls::client_config(f).context("--tls-ca")?);
    }
    let server_tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::server_config(cert, key).context("--tls-cert/--tls-key")?)
        }
        _ => {
            warn!("no --tls-cert: the API is served over plain HTTP");
            None
        }
    };
    cfg.https = server_tls.is_some();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state dir {}", cfg.state_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    info!(
        "ums coordinator {} {} on {}://{} (containerd {}, state {}, files {})",
        cfg.name,
        env!("CARGO_PKG_VERSION"),
        if cfg.https { "https" } else { "http" },
        listener.local_addr().unwrap_or(cfg.listen),
        cfg.containerd_socket.display(),
        cfg.containerd_state.display(),
        cfg.state_dir.display()
    );
    // Probed once here (criu check takes a while), then answered in every /healthz.
    let caps = Capabilities::local().await;
    info!(
        "capabilities: CRIU {}, runc {}, runtimes {}",
        caps.criu
            .as_deref()
            .or(caps.criu_error.as_deref())
            .unwrap_or("none"),
        caps.runc.as_deref().unwrap_or("none"),
        caps.runtimes.join(", ")
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
    server::serve(coordinator, listener, server_tls, shutdown_signal())
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
    opts.token = a.client.token()?;
    opts.tls = a.client.tls()?;
    opts.placement = Placement {
        to_interface: a.to_interface,
        pod_namespace: a.pod_namespace,
        pod_name: a.pod_name,
    };
    let endpoint = EndpointOptions {
        listen: a.endpoint_listen,
        target: a.endpoint_target,
        mode: a.endpoint_mode,
    };
    opts.endpoint = (!endpoint.is_empty()).then_some(endpoint);
    opts.approach = a.approach;
    opts.post_copy = a.post_copy;
    opts.hold = a.hold;
    if a.dry_run {
        let survey = client::survey(&opts)
            .await
            .with_context(|| format!("surveying {} from {} to {}", a.container, a.from, a.to))?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&survey).context("encoding the survey")?
            );
        } else {
            print!("{}", survey.explain());
        }
        return match survey.reason {
            Some(r) if !survey.feasible => Err(anyhow::anyhow!(r)),
            _ => Ok(()),
        };
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
        if let Some(e) = &report.endpoint {
            println!("{}", e.line());
        }
    }
    Ok(())
}

async fn run_ls(a: LsArgs) -> Result<()> {
    let at = PeerUrl::parse(&a.at)?;
    let records = status::records(&a.client.http()?, &at)
        .await
        .map_err(|e| status::explain(e, &at))
        .with_context(|| format!("listing the migrations at {at}"))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).context("encoding the list")?
        );
    } else {
        print!("{}", status::table(&records));
    }
    Ok(())
}

async fn run_status(a: StatusArgs) -> Result<()> {
    let at = PeerUrl::parse(&a.at)?;
    let http = a.client.http()?;
    let explain = |e| status::explain(e, &at);
    match &a.id {
        Some(id) => {
            let r = status::record(&http, &at, id)
                .await
                .map_err(explain)
                .with_context(|| format!("migration {id} at {at}"))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).context("encoding")?);
            } else {
                print!("{}", status::detail(&r));
            }
        }
        None => {
            let h = status::health(&http, &at)
                .await
                .with_context(|| format!("the coordinator at {at}"))?;
            let records = status::records(&http, &at)
                .await
                .map_err(explain)
                .with_context(|| format!("the migrations at {at}"))?;
            if a.json {
                let v = serde_json::json!({"health": h, "migrations": records});
                println!("{}", serde_json::to_string_pretty(&v).context("encoding")?);
            } else {
                print!("{}", status::summary(&at, &h, &records));
            }
        }
    }
    Ok(())
}

async fn run_expose(a: ExposeArgs) -> Result<()> {
    let http = a.client.http()?;
    let out = match (a.container, a.listen, a.target) {
        (Some(c), Some(listen), Some(target)) => {
            let mut req = ExposeRequest::new(&c, &listen, &target, a.mode);
            req.hold_timeout_secs = a.hold_timeout;
            req.drain_timeout_secs = a.drain_timeout;
            req.grace_secs = a.grace;
            req.retry_after_secs = a.retry_after;
            let info = expose::expose(&http, &a.coordinator, &req)
                .await
                .with_context(|| format!("exposing {c} on {listen}"))?;
            serde_json::to_string(&info)
        }
        _ => serde_json::to_string_pretty(&expose::list(&http, &a.coordinator).await?),
    };
    println!("{}", out.context("encoding the answer")?);
    Ok(())
}

async fn run_unexpose(a: UnexposeArgs) -> Result<()> {
    let http = a.client.http()?;
    let info = expose::unexpose(&http, &a.coordinator, &a.which)
        .await
        .with_context(|| format!("removing the endpoint {}", a.which))?;
    println!(
        "{}",
        serde_json::to_string(&info).context("encoding the answer")?
    );
    Ok(())
}
