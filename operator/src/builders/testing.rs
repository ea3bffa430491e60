//! Spec fixtures shared by the builder tests.

use crate::crd::{ChatGateway, ChatGatewaySpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;

/// The Deployment's pod spec.
pub fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

/// A ChatGateway parsed from YAML, with a name, namespace and uid like a stored one.
pub fn cgw(spec_yaml: &str) -> ChatGateway {
    let spec: ChatGatewaySpec = crate::yaml::from_str(spec_yaml).expect("spec fixture");
    let mut cgw = ChatGateway::new("chat", spec);
    cgw.metadata.namespace = Some("apps".into());
    cgw.metadata.uid = Some("0b7d1e3c-uid".into());
    cgw.metadata.generation = Some(1);
    cgw
}

/// Minimal valid spec: insecure auth (with its opt-in), everything else defaulted (one
/// pod, memory engine).
pub const MINIMAL: &str =
    "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}";

/// The collector as a native sidecar, a user sidecar and a route to it.
pub const SIDECARS: &str = r#"
gateway:
  auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}
  routes:
    - {name: bots, pathPrefix: /bots, upstream: "localhost:9000"}
telemetry:
  otlpEndpoint: http://jaeger-collector.observability:4317
  collector:
    enabled: true
    resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {memory: 128Mi}}
sidecars:
  - name: bot
    image: registry.example/bot:1.0
    ports: [{name: ws, containerPort: 9000}]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 5}
    resources: {requests: {cpu: 10m, memory: 16Mi}}
"#;

/// The application's backend in the loop: the server API and every hook, a namespace
/// whose joins the backend decides, and a NetworkPolicy.
pub const BACKEND: &str = r#"
gateway:
  auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}
  api:
    port: 9443
    keysSecretRef: {name: chat-api, key: keys}
    reloadInterval: 30s
    defaultSender: announcer
    allowFrom: [{namespaceSelector: {matchLabels: {team: backend}}}]
  hooks:
    connect: {url: "http://backend:8000/connect", timeout: 300ms, onFailure: allow}
    join: {url: "http://backend:8000/join", retries: 0, maxConcurrent: 32, breakerFailures: 3, breakerCooldown: 10s, rooms: ["team:*"]}
    send: {url: "http://backend:8000/send", rooms: ["support:*", "lobby"]}
    refresh: {url: "http://backend:8000/refresh"}
    events: {url: "http://backend:8000/events", timeout: 5s, queueSize: 500, batch: 20, kinds: [message]}
  namespaces:
    - {prefix: "team:", join: backend}
  config:
    api: {maxBroadcastRooms: 50}
networkPolicy: {}
"#;

/// Everything switched on.
pub const FULL: &str = r#"
image: registry.example/chat-gateway:1.2.3
imagePullPolicy: Always
replicas: 3
gateway:
  allowedOrigins: ["https://chat.example"]
  redis:
    urlSecretRef: {name: redis, key: url}
    keyPrefix: prod
  auth:
    mode: jwt
    queryToken: false
    expiryWarning: 2m
    jwt:
      algorithm: HS256
      secretRef: {name: jwt, key: secret}
      jwksSecretRef: {name: jwks, key: jwks.json}
      issuer: https://id.example
      audience: chat.example
      reloadInterval: 30s
      leeway: 10s
      roomsClaim: chat_rooms
  heartbeat: {interval: 20s}
  limits:
    {maxFrameBytes: 32768, messageRate: 10, userMessageRate: 40, userMessageBurst: 90,
     connectionsPerUser: 20, newRoomsPerHour: 30, frameRate: 50, frameBurst: 80,
     handshakesPerIp: 32, historyPageBytes: 65536, replayChunkBytes: 32768, presenceUsers: 200,
     presenceLinger: 2s, presenceBatch: 250ms, fanoutBatch: 10ms}
  history: {maxMessages: 500, maxAge: 12h}
  sessions: {resumeTtl: 10m, keptPerUser: 12}
  rebalance: {enabled: true, tolerancePercent: 30, rate: 10, absThreshold: 50, interval: 5s}
  admission: {rate: 500, perIpRate: 10, perIpBurst: 30, perUserRate: 2, perUserBurst: 8}
  namespaces:
    - {prefix: "team:", join: "claim:teams", send: grant, retention: {maxAge: 1h}}
    - {prefix: "typing:", keepHistory: false, presence: false}
    - {prefix: "user:", dm: sharedRoom, dmQuota: 20, retention: {maxMessages: 50}}
  defaultNamespace: {join: grant, historyWithoutJoin: true, joinLeaveEvents: false, maxBodyBytes: 4096}
  routes:
    - name: bots
      pathPrefix: /bots
      upstream: bot-service:9000
      stripPrefix: true
      headers: {X-Team: blue}
      forwardUser: false
      connectTimeout: 3s
      retries: 4
      retryBackoff: 100ms
      idleTimeout: 30m
      maxConnections: 500
      maxFrameBytes: 65536
    - name: games
      pathPrefix: /games/live
      upstream: ws://localhost:9100/base
  config:
    limits: {maxErrorsInRow: 7, maxFrameBytes: 1024}
    sessions: {dedupWindow: 2m}
drain: {timeout: 90s, acceptGrace: 5s, evictRate: 200, period: 30s, reconnectJitter: 3s}
rollout: {minReadySeconds: 20}
autoscaling:
  enabled: true
  minReplicas: 3
  maxReplicas: 30
  targetConnectionsPerPod: 5000
  targetCpuUtilization: 70
disruptionBudget: {minAvailable: "50%"}
telemetry: {otlpEndpoint: "http://otel-collector.observability:4317", samplingRatio: 0.25}
service: {type: LoadBalancer, port: 443, annotations: {example.com/lb: internal}}
podLabels: {team: chat}
env: [{name: RUST_LOG, value: "info,chat_gateway=debug"}]
envFrom: [{configMapRef: {name: proxy-settings}}]
priorityClassName: chat-critical
serviceAccountName: chat-gateway
"#;
