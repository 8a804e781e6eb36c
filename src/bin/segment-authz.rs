//! `segment-authz --socket /run/docker/plugins/segment-policy.sock [--root /]`
//!
//! The segment's Docker authorization plugin. Start it before dockerd, which
//! runs with `--authorization-plugin=segment-policy`; it serves until
//! SIGTERM or SIGINT and then removes its socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use segment_agent::docker::authz::{self, DEFAULT_SOCKET, PLUGIN_NAME, Segment};
use segment_agent::docker::inspect::{DEFAULT_DOCKER_SOCKET, DockerSocket};
use segment_agent::docker::resolver::KernelArea;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

const USAGE: &str = "usage: segment-authz [--socket PATH] [--root DIR] [--docker-socket PATH] [--verbose]\n\
    \x20 --socket PATH  plugin socket (default /run/docker/plugins/segment-policy.sock)\n\
    \x20 --docker-socket PATH  dockerd's socket, to look up containers (default /var/run/docker.sock)\n\
    \x20 --root DIR     segment root whose var/lib/docker is the data area (default /)\n\
    \x20 --verbose      log allowed requests too";

/// Command-line options.
#[derive(Debug, PartialEq)]
struct Options {
    socket: PathBuf,
    root: PathBuf,
    docker_socket: PathBuf,
    verbose: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        socket: PathBuf::from(DEFAULT_SOCKET),
        root: PathBuf::from("/"),
        docker_socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
        verbose: false,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => options.socket = value("--socket")?.into(),
            "--root" => options.root = value("--root")?.into(),
            "--docker-socket" => options.docker_socket = value("--docker-socket")?.into(),
            "--verbose" => options.verbose = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            #[allow(clippy::print_stderr)] // before tracing: a usage error
            {
                eprintln!("segment-authz: {e}\n{USAGE}");
            }
            return ExitCode::from(2);
        }
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

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_arguments() {
        let o = parse_args(args(&[
            "--socket",
            "/tmp/p.sock",
            "--root",
            "/seg",
            "--docker-socket",
            "/d.sock",
            "--verbose",
        ]))
        .unwrap();
        assert_eq!(o.docker_socket, PathBuf::from("/d.sock"));
        assert_eq!(o.socket, PathBuf::from("/tmp/p.sock"));
        assert_eq!(o.root, PathBuf::from("/seg"));
        assert!(o.verbose);
        assert_eq!(
            parse_args(args(&[])).unwrap().socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert!(parse_args(args(&["--socket"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }
}
