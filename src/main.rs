//! The `segment-agent` binary: `serve` runs the daemon, `check` runs the
//! preflight checks.

use anyhow::Context;
use clap::{Parser, Subcommand};
use segment_agent::{
    agent,
    api::Listeners,
    apparmor::ApparmorParser,
    config::{Config, LogConfig, LogFormat},
    host::HostFacts,
    metrics::AgentMetrics,
    preflight,
    segment::SegmentManager,
};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};
use tracing::info;

#[derive(Parser)]
#[command(version = segment_agent::VERSION, about = "Host agent for LXC segments on libvirt")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/segment-agent/agent.toml")]
        config: PathBuf,
    },
    /// Check that this host can run segments; exits non-zero on any failure.
    Check {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/segment-agent/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => match Config::load(&config) {
            Ok(config) => {
                init_logging(&config.log);
                serve(config)
            }
            Err(e) => Err(e.into()),
        },
        Command::Check { config } => check(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A configuration that failed to load set up no logging yet.
            init_logging(&LogConfig::default());
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tracing to stderr (the journal under systemd), once: plain text (colours
/// only on a terminal) or JSON lines; `RUST_LOG` overrides the level. Also
/// routes libvirt's own error reports into it.
fn init_logging(log: &LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_ok() {
        segment_agent::hypervisor::libvirt::route_errors_to_tracing();
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    init_logging(&LogConfig::default());
    let config = Config::load(path)?;
    let backends = agent::real_backends(&config);
    let checks = preflight::run(
        &config,
        backends.hypervisor.as_ref(),
        &ApparmorParser::default(),
        backends.filter.as_ref(),
    );
    let mut failed = 0;
    for c in &checks {
        match &c.result {
            Ok(detail) => println!("ok    {:<14} {detail}", c.name),
            Err(reason) => {
                failed += 1;
                println!("FAIL  {:<14} {reason}", c.name)
            }
        }
    }
    println!("{} checks, {failed} failed", checks.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    // Before anything changes: a second agent must not recover, sweep or
    // start what the running one manages.
    let _state_lock = segment_agent::state_lock::StateLock::acquire(&config.state_dir)?;
    segment_agent::api::server::refuse_if_answered(&config.listen.socket)?;
    let host = HostFacts::read("/proc".as_ref(), &config.host_id)?;
    let mut settings = agent::settings(&config)?;
    let c = config.clone();
    settings.confinement =
        tokio::task::spawn_blocking(move || agent::confinement(&c, ApparmorParser::default()))
            .await?;
    let c = config.clone();
    settings.disk =
        tokio::task::spawn_blocking(move || agent::disk_limits(&c, agent::disk_quota(&c).as_ref()))
            .await?;
    let backends = agent::real_backends(&config);
    let (c, filter) = (config.clone(), backends.filter.clone());
    settings.filtering =
        tokio::task::spawn_blocking(move || agent::filtering(&c, filter.as_ref())).await?;
    let registry = agent::registry(&config, &host)?;
    let metrics = Arc::new(AgentMetrics::new());
    let peers = segment_agent::segment::peers::ClusterPeers::load(&config.state_dir);
    let manager = Arc::new(
        SegmentManager::new(backends, registry, settings)
            .with_observer(metrics.clone())
            .with_cluster_peers(peers),
    );
    let watchdog = agent::watchdog_period().map(|every| tokio::spawn(agent::watchdog(every)));
    let _ = sd_notify::notify(
        false,
        &[sd_notify::NotifyState::Status(
            "recovering segments from libvirt",
        )],
    );
    agent::recover_when_available(&manager, &metrics)
        .await
        .context("recovering segments")?;
    let listeners = Listeners::bind(&config.listen).await?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoint = agent::metrics_endpoint(
        &config,
        manager.clone(),
        host.clone(),
        metrics.clone(),
        async {
            let _ = metrics_stopped.await;
        },
    )
    .await?
    .map(|(_, serve)| tokio::spawn(serve));
    let reporter =
        agent::reporter(&config, manager.clone(), host.clone(), metrics.clone())?.map(tokio::spawn);
    info!(socket = %config.listen.socket.display(), tcp = ?config.listen.tcp,
        metrics = ?config.metrics.listen, host_id = %host.host_id, "serving");
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ],
    );
    agent::serve(manager, host, listeners, metrics, shutdown_signal()).await?;
    let _ = stop_metrics.send(());
    for task in [reporter, endpoint, watchdog].into_iter().flatten() {
        task.abort();
    }
    info!("stopped; segments keep running");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT: stop serving; segments are left running.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
