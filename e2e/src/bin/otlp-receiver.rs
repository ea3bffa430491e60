//! The cluster suite's trace receiver, run as a pod: the e2e crate's OTLP/gRPC receiver
//! (`e2e::otlp`) on `--otlp` and the spans it got, as a JSON array, on
//! `GET /spans` of `--http` (plain HTTP/1.1, one request per connection: the suite's
//! client is urllib on the node). Spans live in memory until the pod goes.

use clap::Parser;
use e2e::otlp::Receiver;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "OTLP/gRPC trace receiver that serves the received spans as JSON")]
struct Args {
    /// Address of the OTLP/gRPC trace service.
    #[arg(long, default_value = "0.0.0.0:4317")]
    otlp: SocketAddr,
    /// Address of the JSON endpoint (GET /spans, GET /healthz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = Arc::new(Receiver::start_on(args.otlp).await?);
    let http = TcpListener::bind(args.http).await?;
    eprintln!(
        "otlp-receiver: OTLP/gRPC on {}, spans on http://{}/spans",
        receiver.addr, args.http
    );
    loop {
        let (stream, _) = http.accept().await?;
        let receiver = receiver.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, &receiver).await {
                eprintln!("otlp-receiver: http: {e}");
            }
        });
    }
}

async fn serve(mut stream: TcpStream, receiver: &Receiver) -> anyhow::Result<()> {
    // The request head only; these requests carry no body.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match target {
        "/spans" => ("200 OK", serde_json::to_string(&receiver.spans())?),
        "/healthz" => ("200 OK", "\"ok\"".to_string()),
        _ => ("404 Not Found", "\"not found\"".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
