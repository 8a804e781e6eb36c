//! `segment-authz [--socket PATH] [--root DIR] [--docker-socket PATH] [--verbose]`
//!
//! The segment's Docker authorization plugin. Start it before dockerd, which
//! runs with `--authorization-plugin=segment-policy`; it serves until
//! SIGTERM or SIGINT and then removes its socket.
//!
//! `segment-authz front [--listen ADDR] [--tls-dir DIR] [--docker-socket PATH]`
//!
//! The segment's Docker endpoint (`segment_policy::front`): mutual TLS
//! on `0.0.0.0:2376` with the certificates in `/etc/docker`, forwarding to
//! dockerd's local socket; SIGHUP loads the certificates again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use segment_policy::agent_token::{self, AgentToken};
use segment_policy::authz::{self, DEFAULT_SOCKET, PLUGIN_NAME, Segment};
use segment_policy::inspect::{DEFAULT_DOCKER_SOCKET, DockerSocket};
use segment_policy::resolver::KernelArea;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

mod front;

/// The command line: the plugin's options, or the `front` subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "segment-authz",
    about = "The segment's Docker policy plugin and mutual-TLS front"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    plugin: Options,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The mutual-TLS front on 2376, forwarding to dockerd's socket.
    Front(front::Options),
}

/// Options of the authorization plugin.
#[derive(Debug, PartialEq, Args)]
struct Options {
    /// The plugin socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The segment root whose var/lib/docker is the data area.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// dockerd's socket, to look up containers.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DOCKER_SOCKET)]
    docker_socket: PathBuf,
    /// Log allowed requests too.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match cli.command {
        Some(Command::Front(options)) => return front::main(options),
        None => cli.plugin,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if options.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(options))
}

async fn run(options: Options) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let listener = match authz::bind(&options.socket) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot create the plugin socket");
            return ExitCode::FAILURE;
        }
    };
    info!(plugin = PLUGIN_NAME, socket = %options.socket.display(), root = %options.root.display(), "serving");
    let segment = Arc::new(Segment {
        area: Arc::new(KernelArea::new(&options.root)),
        containers: Arc::new(DockerSocket::new(&options.docker_socket)),
        agent_token: AgentToken::at(options.root.join("etc/docker").join(agent_token::FILE)),
    });
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    };
    authz::serve(listener, segment, shutdown).await;
    if let Err(e) = std::fs::remove_file(&options.socket) {
        error!(error = %e, "cannot remove the plugin socket");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("segment-authz").chain(args.iter().copied()))
    }

    #[test]
    fn parses_arguments() {
        let o = parse(&[
            "--socket",
            "/tmp/p.sock",
            "--root",
            "/seg",
            "--docker-socket",
            "/d.sock",
            "--verbose",
        ])
        .unwrap()
        .plugin;
        assert_eq!(o.docker_socket, PathBuf::from("/d.sock"));
        assert_eq!(o.socket, PathBuf::from("/tmp/p.sock"));
        assert_eq!(o.root, PathBuf::from("/seg"));
        assert!(o.verbose);
        assert_eq!(
            parse(&[]).unwrap().plugin.socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert!(parse(&["--socket"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn front_is_a_subcommand_without_the_plugin_options() {
        let cli = parse(&["front", "--listen", "127.0.0.1:1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Front(_))));
        assert!(parse(&["--verbose", "front"]).is_err());
    }
}
