//! `chat-gateway`: the gateway binary.

use chat_gateway::config::{AuthMode, Config};
use chat_gateway::telemetry::{self, LogFormat};
use chat_gateway::Gateway;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// WebSocket chat gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML config file; `CHATGW_*` environment variables override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Listen address (overrides server.listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Print the effective configuration, every default included, and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (mut config, ignored_env) =
        match Config::load_reporting(args.config.as_deref(), std::env::vars()) {
            Ok(loaded) => (loaded.config, loaded.ignored_env),
            Err(e) => {
                eprintln!("chat-gateway: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if args.print_config {
        print!("{}", config.to_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-gateway: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let format = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    };
    let telemetry = runtime.block_on(async { telemetry::init(format) });
    if !ignored_env.is_empty() {
        tracing::info!(
            variables = %ignored_env.join(","),
            "ignoring {}* variables that Kubernetes injects as service links (set enableServiceLinks: false on the pod to drop them)",
            chat_gateway::config::ENV_PREFIX
        );
    }
    let result = runtime.block_on(run(config));
    // Spans of the last moments (the drain) are flushed before exit.
    runtime.block_on(async move { telemetry.shutdown() });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chat-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if config.auth.mode == AuthMode::Insecure {
        tracing::warn!(
            "auth.mode is INSECURE: anyone can connect as any user with ?user=NAME. \
             This is for local demos only; never expose this gateway."
        );
    }
    let gateway = Gateway::start(config).await?;
    tracing::info!(addr = %gateway.addr, node = %gateway.node.id, "chat-gateway listening");
    shutdown_signal().await;
    // A second SIGTERM or SIGINT cuts the drain short.
    let force = tokio_util::sync::CancellationToken::new();
    let second = force.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::warn!("second signal: closing everything now");
        second.cancel();
    });
    let outcome = gateway.drain(&force).await;
    tracing::info!(
        evicted = outcome.evicted,
        forced = outcome.forced,
        "exiting"
    );
    gateway.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
