//! `chat-gateway`: the gateway binary.

use chat_gateway::auth::mint::{self, TokenSpec};
use chat_gateway::config::{AuthMode, Config, JwtAlgorithm, Overrides};
use chat_gateway::telemetry::{self, LogFormat};
use chat_gateway::Gateway;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// jemalloc rather than glibc's malloc: less CPU per connection and less memory per
/// idle one (docs/architecture.md, "Allocator").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. It keeps freed pages for 10 s by default; a
/// burst of connects (each holding request and Redis buffers for a moment) then stayed in
/// the pod's memory that long: on the Redis engine about a fifth of the RSS 3 s after
/// 15,000 connects. Freed pages go back after about a second, purged by jemalloc's
/// background thread so that no request waits for it. `_RJEM_MALLOC_CONF` still
/// overrides these (docs/architecture.md, "Allocator").
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: the pointer is to the first byte of a static, NUL-terminated C string
    // literal, valid for the program's life; jemalloc only reads it.
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000".as_ptr() });

/// WebSocket chat gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML config file; `CHATGW_*` environment variables override it.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Listen address (overrides server.listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Print the effective configuration, every default included, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mint a token signed with the configured HS256 secret (or --private-key), with the
    /// configured issuer and audience: for docs, demos and tests.
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The user (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Grant rooms in the connection token: `PATTERN` (join and send) or
    /// `PATTERN=join,send`; repeatable.
    #[arg(long = "rooms", value_name = "PATTERN[=RIGHTS]")]
    rooms: Vec<String>,
    /// Mint a subscription token for this room instead of a connection token.
    #[arg(long)]
    room: Option<String>,
    /// Rights of a subscription token (`join`, `send`; default both).
    #[arg(long, value_delimiter = ',')]
    rights: Vec<String>,
    /// Extra claim `NAME=V1,V2` (for `claim:NAME` policies); repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUES")]
    claims: Vec<String>,
    /// `kid` header (picks a JWKS key).
    #[arg(long)]
    kid: Option<String>,
    /// PEM private key (for RS256, ES256, EdDSA) instead of the configured secret.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Algorithm of --private-key.
    #[arg(long, value_parser = ["RS256", "ES256", "EdDSA"])]
    alg: Option<String>,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn token(config: &Config, t: TokenArgs) -> Result<String, String> {
    let key_text = match &t.private_key {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let alg = match t.alg.as_deref() {
        Some("RS256") => JwtAlgorithm::RS256,
        Some("ES256") => JwtAlgorithm::ES256,
        Some("EdDSA") => JwtAlgorithm::EdDSA,
        _ if key_text.is_some() => return Err("--private-key needs --alg".into()),
        _ => JwtAlgorithm::HS256,
    };
    let key = mint::signing_key(&config.auth.jwt, key_text.as_deref().map(|k| (k, alg)))?;
    let pairs = |items: &[String]| {
        items
            .iter()
            .map(|item| match item.split_once('=') {
                Some((name, values)) => (name.to_string(), split_list(values)),
                None => (item.clone(), Vec::new()),
            })
            .collect::<Vec<_>>()
    };
    let rooms = pairs(&t.rooms)
        .into_iter()
        .map(|(pattern, rights)| {
            let rights = if rights.is_empty() {
                vec!["join".into(), "send".into()]
            } else {
                rights
            };
            (pattern, rights)
        })
        .collect();
    let spec = TokenSpec {
        user: t.user,
        ttl: t.ttl,
        room: t.room,
        rooms,
        rights: t.rights,
        kid: t.kid,
        claims: pairs(&t.claims),
    };
    mint::mint(&config.auth.jwt, &spec, key)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let flags = Overrides {
        listen: args.listen,
    };
    let (config, ignored_env) =
        match Config::load_reporting(args.config.as_deref(), std::env::vars(), &flags) {
            Ok(loaded) => (loaded.config, loaded.ignored_env),
            Err(e) => {
                eprintln!("chat-gateway: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    if let Some(Cmd::Token(t)) = args.command {
        return match token(&config, t) {
            Ok(token) => {
                println!("{token}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat-gateway token: {e}");
                std::process::ExitCode::from(2)
            }
        };
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
    // Not a plain drop, which waits for every blocking task (a DNS lookup with CoreDNS
    // down can take tens of seconds past the pod's grace period).
    runtime.shutdown_timeout(Duration::from_secs(1));
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
    if let Some(api) = gateway.api_addr {
        tracing::info!(addr = %api, "server API listening");
    }
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

#[cfg(test)]
mod tests {
    /// The options jemalloc runs with are ours: a symbol jemalloc does not look for
    /// (another prefix, a typo) would leave its 10 s default in place silently.
    #[test]
    fn jemalloc_runs_with_our_options() {
        use tikv_jemalloc_ctl::{background_thread, raw};
        let decay: isize =
            unsafe { raw::read(b"opt.dirty_decay_ms\0") }.expect("read opt.dirty_decay_ms");
        assert_eq!(decay, 1000);
        assert!(background_thread::read().expect("read background_thread"));
    }
}
