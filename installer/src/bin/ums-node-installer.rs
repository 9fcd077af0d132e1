//! `ums-node-installer`: puts UMS on a node (the binaries, the `ums` runtime in containerd's
//! config, a restart of containerd), takes it off again, or only edits a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};

use ums_node_installer::node::{self, HostExec, HostRoot, Target};
use ums_node_installer::{ConfigVersion, Edit};

#[derive(Parser)]
#[command(
    name = "ums-node-installer",
    version,
    about = "Install the UMS runtime (handler `ums`, io.containerd.ums.v1) on a node's containerd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add (or remove) the `ums` runtime in one containerd config file or k3s template.
    Config(ConfigArgs),
    /// Copy the binaries to the host, add the runtime to its containerd and restart it.
    Install(NodeArgs),
    /// Remove the runtime from the host's containerd, restart it and remove the binaries.
    Uninstall(NodeArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// containerd's config.toml, or a k3s config.toml.tmpl / config-v3.toml.tmpl.
    file: PathBuf,
    /// Remove the runtime instead.
    #[arg(long)]
    uninstall: bool,
    /// containerd binary whose `config default` is the start of a config that does not exist.
    #[arg(long, value_name = "BIN", default_value = "containerd")]
    containerd: String,
    /// Config version a k3s template renders (default: from its name).
    #[arg(long, value_name = "2|3", value_parser = parse_version)]
    template_version: Option<ConfigVersion>,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Where the host's / is mounted.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/host",
        env = "UMS_HOST_ROOT"
    )]
    host_root: PathBuf,
    /// Command prefix that runs a command on the host (empty: run it here).
    #[arg(
        long,
        value_name = "CMD",
        default_value = "nsenter --target 1 --mount --",
        env = "UMS_HOST_EXEC"
    )]
    host_exec: String,
    /// The host's containerd config (a host path; `.tmpl`: a k3s template), or `auto`:
    /// k3s's template when the host runs k3s, /etc/containerd/config.toml otherwise.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "auto",
        env = "UMS_CONTAINERD_CONFIG"
    )]
    config: String,
    /// systemd unit to restart afterwards, `auto` (containerd, or k3s / k3s-agent) or `none`.
    #[arg(long, value_name = "UNIT", default_value = "auto", env = "UMS_RESTART")]
    restart: String,
    /// Then wait for SIGTERM (a DaemonSet's pod stays up instead of restarting).
    #[arg(long)]
    wait: bool,
    /// Files to put into /opt/ums/bin on the host (install only).
    #[arg(
        value_name = "FILE",
        default_values = [
            "/usr/local/bin/containerd-shim-ums-v1",
            "/usr/local/sbin/criu",
            "/usr/local/bin/criu-sync",
            "/usr/local/bin/ums",
        ]
    )]
    files: Vec<PathBuf>,
}

fn parse_version(s: &str) -> Result<ConfigVersion, String> {
    match s {
        "2" => Ok(ConfigVersion::V2),
        "3" => Ok(ConfigVersion::V3),
        _ => Err("2 (containerd 1.6/1.7) or 3 (containerd 2.x)".into()),
    }
}

fn describe(edit: Edit) -> &'static str {
    match edit {
        Edit::Added => "runtime ums added",
        Edit::Updated => "runtime ums updated",
        Edit::Unchanged => "unchanged",
        Edit::Removed => "runtime ums removed",
    }
}

fn main() -> ExitCode {
    let res = match Cli::parse().command {
        Command::Config(a) => run_config(a),
        Command::Install(a) => run_node(a, false),
        Command::Uninstall(a) => run_node(a, true),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ums-node-installer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_config(a: ConfigArgs) -> Result<()> {
    let host = HostExec::default();
    let default = || host.output(&[a.containerd.as_str(), "config", "default"]);
    let edit = node::edit_file(&a.file, a.uninstall, a.template_version, &default)?;
    println!("{}: {}", a.file.display(), describe(edit));
    Ok(())
}

fn run_node(a: NodeArgs, uninstall: bool) -> Result<()> {
    // Block the stop signals first: a SIGTERM during the work is taken by the wait below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if a.wait {
        stop.thread_block().context("blocking SIGTERM/SIGINT")?;
    }
    let root = HostRoot::new(&a.host_root);
    let host = HostExec::new(a.host_exec.split_whitespace().map(String::from).collect());
    let target = match a.config.as_str() {
        "auto" => Target::detect(&root)?,
        path => Target::from_path(PathBuf::from(path)),
    };
    let file = root.join(target.path());
    if !uninstall {
        let files = node::install_files(&root, &a.files)?;
        for p in &files.installed {
            eprintln!("installed {}", p.display());
        }
        for p in &files.linked {
            eprintln!("linked {}", p.display());
        }
        for e in &files.skipped {
            eprintln!("warning: {e}");
        }
    }
    let default = || host.output(&["containerd", "config", "default"]);
    let edit = node::edit_file(&file, uninstall, None, &default)?;
    eprintln!("{}: {}", target.path().display(), describe(edit));
    if edit != Edit::Unchanged {
        let unit = match a.restart.as_str() {
            "none" => None,
            "auto" => Some(target.unit(&host)?),
            unit => Some(unit.to_string()),
        };
        if let Some(unit) = unit {
            node::restart(&host, &unit)?;
            eprintln!("restarted {unit}");
        }
    }
    if uninstall {
        for p in node::remove_files(&root)? {
            eprintln!("removed {}", p.display());
        }
    }
    eprintln!("done");
    if a.wait {
        let sig = stop.wait().context("waiting for SIGTERM")?;
        eprintln!("{sig:?}: exiting");
    }
    Ok(())
}
