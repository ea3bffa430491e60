//! `chat-gateway`: the gateway binary.

use chat_gateway::config::{AuthMode, Config};
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
    let mut config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
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
    init_logging();
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
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chat-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::stderr().is_terminal() {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.json().with_writer(std::io::stderr).init();
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
    tracing::info!("shutting down");
    gateway.shutdown(Duration::from_secs(10)).await;
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
