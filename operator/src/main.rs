//! `chat-gateway-operator`: runs the controller, or renders a ChatGateway's children.

use anyhow::Context as _;
use chat_gateway_operator::custom_metrics::readings::Readings;
use chat_gateway_operator::custom_metrics::{self, CustomMetrics};
use chat_gateway_operator::deletion_cost;
use chat_gateway_operator::leader::LeaderElector;
use chat_gateway_operator::metrics::Metrics;
use chat_gateway_operator::reconcile::{Context, ServedKinds};
use chat_gateway_telemetry as telemetry;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Kubernetes operator for ChatGateway resources.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the objects the operator would apply for the ChatGateway(s) in a file.
    Render {
        /// YAML file with one or more ChatGateway documents; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for resources that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Gateway image for ChatGateways that name none (as `run --gateway-image`).
        #[arg(long, env = "OPERATOR_GATEWAY_IMAGE")]
        gateway_image: Option<String>,
    },
    /// Print the ChatGateway CRD.
    Crd,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "chatgateway-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease; defaults to the client's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease is held without renewal.
    /// At least 3s.
    #[arg(long, env = "OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = chat_gateway_operator::leader::parse_lease_duration)]
    lease_duration: Duration,
    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Gateway image for ChatGateways that name none; default the gateway release
    /// matching this operator.
    #[arg(long, env = "OPERATOR_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    /// The custom metrics API (served when --custom-metrics-addr is set).
    #[command(flatten)]
    custom_metrics: custom_metrics::Args,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Render {
            file,
            namespace,
            gateway_image,
        }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let inputs = chat_gateway_operator::builders::Inputs {
                default_image: gateway_image,
                ..Default::default()
            };
            print!(
                "{}",
                chat_gateway_operator::render::render_with(&text, &namespace, &inputs)?
            );
            Ok(())
        }
        Some(Command::Crd) => {
            print!("{}", chat_gateway_operator::crd_yaml()?);
            Ok(())
        }
        Some(Command::Run(args)) => run(*args),
        None => run(RunArgs::parse_from(["run"])),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Logs and OTLP traces exactly like the gateway (standard OTEL_* variables); only the
    // defaults differ. Set before any thread exists, so changing the environment is safe.
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        std::env::set_var("OTEL_SERVICE_NAME", "chatgateway-operator");
    }
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "info,kube=warn");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let telemetry = runtime.block_on(async {
        telemetry::init(match args.log_format {
            LogFormat::Json => telemetry::LogFormat::Json,
            LogFormat::Text => telemetry::LogFormat::Pretty,
        })
    });
    let result = runtime.block_on(operate(args));
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "operator stopped");
    }
    telemetry.shutdown();
    result
}

async fn operate(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    ensure_crd(&client).await?;
    let served = ServedKinds::discover(&client)
        .await
        .context("discovering API kinds")?;
    tracing::info!(hpa = ?served.hpa, pdb = ?served.pdb, native_sidecars = served.native_sidecars, pdb_eviction_policy = served.pdb_eviction_policy, "API versions the cluster serves");
    if served.hpa.is_none() || served.pdb.is_none() {
        tracing::warn!("the cluster serves no HorizontalPodAutoscaler or PodDisruptionBudget version the operator writes; affected ChatGateways will report it in their Degraded condition");
    }
    let metrics = Metrics::new();
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    // Every replica serves the custom metrics API, leader or not (custom_metrics docs), from
    // the one reading of the gateway pods, which the leader's pod-deletion cost shares.
    let interval = args.custom_metrics.scrape_interval;
    let (custom_metrics, mut readings) = match args.custom_metrics.addr {
        Some(_) => {
            let readings = Readings::start(client.clone(), interval, &metrics)
                .context("reading the gateway pods")?;
            let api = CustomMetrics::start(
                client.clone(),
                &args.custom_metrics,
                &namespace,
                &metrics,
                &readings,
            )
            .await
            .context("starting the custom metrics API")?;
            (Some(api), Some(readings))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    match &custom_metrics {
        Some(cm) => tokio::spawn(chat_gateway_operator::http::serve_with_readiness(
            listener,
            metrics.clone(),
            cm.readiness(),
        )),
        None => tokio::spawn(chat_gateway_operator::http::serve(
            listener,
            metrics.clone(),
        )),
    };

    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("operator-{}", std::process::id()))
    });
    let elector = LeaderElector::new(
        client.clone(),
        &namespace,
        &args.lease_name,
        &identity,
        args.lease_duration,
    );

    // Standby until the Lease is ours (or we are told to stop).
    let mut stop = Box::pin(shutdown_signal());
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(elector.renew_interval()) => {}
        }
    }
    tracing::info!(%identity, lease = %format!("{namespace}/{}", args.lease_name), "leading");

    let leading = custom_metrics.as_ref().map(|cm| cm.lead(&identity));
    // Without the custom metrics API nobody reads the pods yet: the leader does, for the
    // deletion cost alone.
    if readings.is_none() {
        readings = Some(
            Readings::start(client.clone(), interval, &metrics)
                .context("reading the gateway pods")?,
        );
    }
    let costs = readings
        .as_ref()
        .map(|r| tokio::spawn(deletion_cost::run(client.clone(), r.values(), r.pods())));
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let ctx = Arc::new(
        Context::new(client.clone(), served, metrics, Some(identity.clone()))
            .with_default_image(args.gateway_image.clone()),
    );
    let controller = tokio::spawn(chat_gateway_operator::controller::run(ctx, async move {
        let _ = lost_rx.await;
    }));
    // Renew until told to stop or the Lease is lost; a replica that lost it must not write.
    // Renewals that keep failing or hang (API server unreachable) also end the term at the
    // renew deadline, a third of the lease before a standby may take over: never two
    // leaders. Each attempt gets only the time left until that deadline.
    let renew_deadline = args.lease_duration * 2 / 3;
    let mut renewed = std::time::Instant::now();
    let lost = loop {
        tokio::select! {
            _ = &mut stop => break false,
            _ = tokio::time::sleep(elector.renew_interval()) => {}
        }
        let left = renew_deadline.saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed = std::time::Instant::now(),
            Ok(Ok(false)) => break true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "renewing the leader lease");
                if renewed.elapsed() >= renew_deadline {
                    break true;
                }
            }
            Err(_) => {
                tracing::warn!(deadline = ?renew_deadline, "no renewal of the leader lease within the renew deadline");
                break true;
            }
        }
    };
    let _ = lost_tx.send(());
    let _ = controller.await;
    if let Some(costs) = costs {
        costs.abort();
    }
    drop(leading);
    if lost {
        anyhow::bail!("lost the leader lease; exiting so a fresh replica can stand by");
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "releasing the leader lease");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Fails with install instructions unless the API server serves ChatGateways in the
/// version this operator speaks (an older CRD that serves only v1alpha1 must be upgraded).
async fn ensure_crd(client: &kube::Client) -> anyhow::Result<()> {
    use chat_gateway_operator::crd::VERSION;
    let install = "install it with `kubectl apply --server-side -f crds/chatgateway.yaml` \
        (Kubernetes before 1.25: `kubectl apply --validate=false -f crds/chatgateway.yaml`), \
        then restart the operator";
    let served = |gv: &str| {
        let gv = gv.to_string();
        async move {
            match client.list_api_group_resources(&gv).await {
                Ok(list) => Ok(list.resources.iter().any(|r| r.name == "chatgateways")),
                Err(kube::Error::Api(_)) => Ok(false),
                Err(e) => Err(e),
            }
        }
    };
    let check = "checking that the ChatGateway CRD is installed";
    if served(&format!("chatgateway.io/{VERSION}"))
        .await
        .context(check)?
    {
        return Ok(());
    }
    let old = chat_gateway_operator::crd::OLD_VERSION;
    if served(&format!("chatgateway.io/{old}"))
        .await
        .context(check)?
    {
        anyhow::bail!(
            "the installed ChatGateway CRD serves only chatgateway.io/{old}; this operator needs \
             chatgateway.io/{VERSION}: upgrade the CRD ({install})"
        );
    }
    anyhow::bail!(
        "the ChatGateway CRD (chatgateways.chatgateway.io) is not installed in this cluster; {install}"
    )
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
