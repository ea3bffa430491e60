//! Reference clients for the cluster suite (`e2e/cluster`): `--clients` resilient clients
//! (`e2e::resilient`: reconnect with backoff, honour goaway, resume, retry with the same
//! msg_id, drop duplicates) chat in rooms and DMs through `--url` while the suite disturbs
//! the gateways (a roll, a killed container, an eviction). One JSON object per line on
//! stdout:
//!   {"event":"ready",...}      every client joined its room
//!   {"event":"status",...}     answer to a `status` line on stdin
//!   {"event":"done",...}       after `stop` (or end of stdin): the fleet's verdict
//! (`e2e::fleet::Verdict`: acknowledged sends, resumes, problems). Exits 0 when it could
//! judge; the suite asserts on `problems`. With `--jwt-secret` (or `CHAT_FLEET_JWT_SECRET`)
//! every connection carries a fresh HS256 token for `--jwt-audience`, as the example
//! gateways require; without, `?user=` (gateways in insecure mode).

use clap::Parser;
use e2e::fleet;
use e2e::resilient::Credentials;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(about = "Reference chat clients that report what they lost (cluster suite)")]
struct Args {
    /// Gateway WebSocket URL (ws://HOST:PORT/ws); several for round-robin reconnects.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Number of clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Number of rooms (clients are spread evenly).
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Each client sends one message this often (milliseconds).
    #[arg(long, default_value_t = 700)]
    send_every_ms: u64,
    /// Prefix of user and room names (unique per run: history in Redis outlives a run).
    #[arg(long)]
    prefix: String,
    /// How long every client may take to join (seconds).
    #[arg(long, default_value_t = 120)]
    join_timeout_secs: u64,
    /// HS256 secret of the gateways' `auth.jwt` (their Secret's value).
    #[arg(long, env = "CHAT_FLEET_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The gateways' `auth.jwt.audience`.
    #[arg(long, default_value = e2e::jwt::AUDIENCE)]
    jwt_audience: String,
    /// After `stop`: how long no client may have been disconnected before the verdict
    /// (in-flight messages and replays arrive meanwhile; seconds).
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// After `stop`: how much longer to wait for every client to be back in its rooms
    /// (seconds).
    #[arg(long, default_value_t = 60)]
    reconnect_timeout_secs: u64,
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let join_timeout = Duration::from_secs(args.join_timeout_secs);
    let reconnect_timeout = Duration::from_secs(args.reconnect_timeout_secs);
    anyhow::ensure!(args.clients >= 2, "--clients must be at least 2");
    let credentials = match &args.jwt_secret {
        Some(secret) => Credentials::Hs256 {
            secret: secret.clone(),
            audience: args.jwt_audience.clone(),
        },
        None => Credentials::Insecure,
    };
    let cs = fleet::spawn(
        &args.prefix,
        &args.url,
        args.clients,
        args.rooms,
        Some(Duration::from_millis(args.send_every_ms)),
        &credentials,
    );
    let started = Instant::now();
    loop {
        let joined = cs.iter().filter(|(_, _, c)| c.with(|r| r.ready)).count();
        if joined == cs.len() {
            break;
        }
        if started.elapsed() > join_timeout {
            emit(
                json!({"event": "done", "problems": [format!("only {joined} of {} clients joined within {:?}", cs.len(), join_timeout)]}),
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    emit(
        json!({"event": "ready", "clients": cs.len(), "after_ms": started.elapsed().as_millis() as u64}),
    );
    let status = |cs: &[(String, Vec<String>, e2e::resilient::Resilient)]| {
        let (mut connected, mut reconnected, mut acked, mut resumes) = (0, 0, 0, 0);
        for (_, _, c) in cs {
            c.with(|r| {
                connected += r.connected as usize;
                reconnected += (r.connects.len() > 1) as usize;
                acked += r.acked.len();
                resumes += r.resumes;
            });
        }
        json!({"connected": connected, "reconnected": reconnected, "acked": acked, "resumes": resumes})
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "stop" => break,
            "status" => {
                let mut s = status(&cs);
                s["event"] = json!("status");
                emit(s);
            }
            "" => {}
            other => eprintln!("chat-fleet: unknown command {other:?} (status | stop)"),
        }
    }
    // Every client back in its rooms (resumed) and none moved for the settle time before
    // the verdict, or the verdict says who was not back.
    let settle = Duration::from_secs(args.settle_secs);
    let records = fleet::settle_and_stop_after(cs, settle, reconnect_timeout).await;
    let v = fleet::verdict(&records, true);
    let mut out = serde_json::to_value(&v)?;
    out["event"] = json!("done");
    emit(out);
    Ok(())
}
