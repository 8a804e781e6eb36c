//! `segment-authz front`: the mutual-TLS front of the segment's Docker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use segment_policy::front::{self, DEFAULT_TLS_DIR, DOCKER_TLS_PORT};
use segment_policy::inspect::DEFAULT_DOCKER_SOCKET;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// Command-line options of the front.
#[derive(Debug, PartialEq, Args)]
pub(crate) struct Options {
    /// Where clients connect.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DOCKER_TLS_PORT)))]
    listen: SocketAddr,
    /// The directory of ca.pem, server-cert.pem and server-key.pem.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TLS_DIR)]
    tls_dir: PathBuf,
    /// dockerd's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DOCKER_SOCKET)]
    docker_socket: PathBuf,
}

/// Runs the front until SIGTERM or SIGINT.
pub(crate) fn main(options: Options) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(options)),
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> ExitCode {
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (mut term, mut int, mut hup) = match signals {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let config = match front::load_config(&options.tls_dir) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot load the certificates");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, listen = %options.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    info!(listen = %options.listen, upstream = %options.docker_socket.display(), "serving");
    let (sender, receiver) = tokio::sync::watch::channel(config);
    let served = front::serve(listener, receiver, options.docker_socket, async {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    });
    tokio::pin!(served);
    loop {
        tokio::select! {
            () = &mut served => return ExitCode::SUCCESS,
            _ = hup.recv() => front::reload(&options.tls_dir, &sender),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        front: Options,
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Cli::try_parse_from(std::iter::once("front").chain(args.iter().copied())).map(|c| c.front)
    }

    #[test]
    fn parses_arguments() {
        let o = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--tls-dir",
            "/t",
            "--docker-socket",
            "/d",
        ])
        .unwrap();
        assert_eq!(o.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(o.tls_dir, PathBuf::from("/t"));
        assert_eq!(o.docker_socket, PathBuf::from("/d"));
        assert_eq!(parse(&[]).unwrap().listen.port(), 2376);
        assert!(parse(&["--listen", "nope"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
