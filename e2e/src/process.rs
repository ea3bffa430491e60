//! A `chat-gateway` process started by a test, on a free loopback port.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `chat-gateway` binary (or another binary of that package) built next to
/// the test executable (`target/<profile>/`), rebuilt first: see [`package_bin`].
pub fn workspace_bin(name: &str) -> PathBuf {
    package_bin("chat-gateway", name)
}

/// Path of binary `name` of workspace package `package`, built next to the test executable
/// (`target/<profile>/`). Builds it once per test process first: `cargo test -p e2e`
/// alone does not rebuild other packages' binaries, and a stale binary would test old
/// code. A failed build fails the test.
pub fn package_bin(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current exe");
    // A test lives in target/<profile>/deps/, a binary in target/<profile>/.
    let dir = exe
        .ancestors()
        .find(|p| p.join("deps").is_dir() && p.file_name().is_some_and(|n| n != "deps"))
        .map(PathBuf::from)
        .expect("target/<profile> directory");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let key = format!("{package}/{name}");
    // Held during the build: concurrent tests wait for the one build.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(&key) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "`cargo build -p {package} --bin {name}` failed ({status:?}): a stale or \
             missing binary would test old code"
        );
        built.push(key);
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// Ports [`free_port`] hands out: below Linux's ephemeral range (32768-60999 by default,
/// where a client socket's local port comes from) and below Kubernetes' NodePorts
/// (30000-32767, which kube-proxy holds open).
const TEST_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// A free TCP port on 127.0.0.1, never one this process handed out before.
///
/// The port is free when handed out, and the server meant to take it binds it some time
/// later (a child process starting up). Two things could take it meanwhile:
/// - the next caller: keeping the handed-out ports closes that race between the tests of
///   one process (they run in parallel threads);
/// - any outgoing connection: a port the kernel picks for `bind(0)` is one of the
///   ephemeral ports it also gives every `connect`, and the tests open thousands of
///   connections. So the port is drawn from [`TEST_PORTS`], outside that range, and
///   checked by binding it.
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// [`free_port`] on another local address.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..10_000 {
        let port = rand::random_range(TEST_PORTS);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) || TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        handed_out.push(port);
        return port;
    }
    panic!("no free port in {TEST_PORTS:?} on {ip}");
}

/// A running gateway process; killed on drop.
pub struct GatewayProcess {
    /// The child process.
    pub child: Child,
    /// Its listen address.
    pub addr: SocketAddr,
    /// The last lines it logged (stderr is read all along: an unread pipe fills up at
    /// 64 KiB and then blocks the gateway in its next log write, a failover's warnings
    /// are enough for that).
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of a gateway's log kept for [`GatewayProcess::log_tail`].
const LOG_LINES: usize = 1000;

/// Reads a child's stderr to its end, keeping the last [`LOG_LINES`] lines.
fn keep_log(child: &mut Child) -> Arc<Mutex<VecDeque<String>>> {
    use std::io::BufRead;
    let log = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(err) = child.stderr.take() {
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let mut l = keep.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() == LOG_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
    }
    log
}

impl GatewayProcess {
    /// Starts `chat-gateway` with the given `CHATGW_*` environment and waits for /healthz.
    pub fn start(env: &[(&str, &str)]) -> GatewayProcess {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], free_port())), env)
    }

    /// Like [`start`](Self::start) on a given address (a restart on the same port).
    pub fn start_on(addr: SocketAddr, env: &[(&str, &str)]) -> GatewayProcess {
        let mut cmd = Command::new(workspace_bin("chat-gateway"));
        cmd.arg("--listen")
            .arg(addr.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn chat-gateway");
        let log = keep_log(&mut child);
        let p = GatewayProcess { child, addr, log };
        p.wait_healthy(Duration::from_secs(20));
        p
    }

    fn wait_healthy(&self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "chat-gateway did not listen on {} within {within:?}",
            self.addr
        );
    }

    /// `GET path` over a plain socket: (status, body), or None when the request fails.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok())?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Some((status, body.unwrap_or_default()))
    }

    /// HTTP status of `GET path` (0 when the request fails).
    pub fn http_status(&self, path: &str) -> u16 {
        self.get(path).map_or(0, |(status, _)| status)
    }

    /// A sample of `/metrics` (name plus labels, exactly as exposed); panics when the
    /// gateway cannot be read or the sample is absent.
    pub fn metric(&self, sample: &str) -> f64 {
        crate::parse_metric(&self.metrics_text(), sample)
    }

    /// A sample of `/metrics`, or None while it does not exist yet; panics when the
    /// gateway cannot be read.
    pub fn sample(&self, sample: &str) -> Option<f64> {
        crate::find_metric(&self.metrics_text(), sample)
    }

    fn metrics_text(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics of {} failed: {other:?}", self.addr),
        }
    }

    /// Waits until `/readyz` answers `want` (200 or 503); panics after `within`.
    pub fn wait_ready(&self, want: u16, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.http_status("/readyz") == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "/readyz of {} never answered {want} within {within:?}",
            self.addr
        );
    }

    /// The last lines the gateway logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `ws://` URL of `/ws` with a query string.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Sends a signal (e.g. `libc`-free: via the `kill` command).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `within` for the process to exit; returns its exit code (None when it
    /// did not exit in time, or was ended by a signal: see [`wait_status`](Self::wait_status)).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        self.wait_status(within).and_then(|s| s.code())
    }

    /// Waits up to `within` for the process to exit; returns how it ended, or None when it
    /// is still running.
    pub fn wait_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process with SIGKILL and asserts that the signal is what ended it.
    pub fn kill_and_reap(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.signal("KILL");
        let status = self.wait_status(Duration::from_secs(10));
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "{} was not ended by SIGKILL: {status:?}",
            self.addr
        );
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
