//! One `redis-server --cluster-enabled yes` process of a [`RedisCluster`](super::RedisCluster).

use super::command_on;
use crate::tls::TlsFiles;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// One node of the cluster.
pub struct Node {
    pub(super) child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its cluster bus port. Not the default port + 10000: that one is only checked free,
    /// and the next node's [`free_port`](crate::process::free_port) may be handed it
    /// before this node binds it.
    pub(super) bus_port: u16,
    pub(super) dir: PathBuf,
    pub(super) tls: Option<Arc<TlsFiles>>,
    /// Stopped with SIGSTOP: its sockets stay open, it answers nothing.
    pub(super) frozen: bool,
}

impl Node {
    pub(super) fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            // The bus and replication speak TLS as well: no plain port.
            Some(files) => cmd.args(files.server_args(self.port, false)).args([
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
            ]),
            None => cmd.args(["--port", &self.port.to_string()]),
        };
        let child = cmd
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args([
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // Fast failure detection: a killed master's replica takes over in ~2 s.
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
                "--appendonly",
                "no",
                "--save",
                "",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make deps installs it: apt-get install redis-server)");
        self.child = Some(child);
    }

    /// Runs one command on this node.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        command_on(self.port, self.tls.as_deref(), args)
    }

    /// URL of the node: `redis://`, `rediss://` in a TLS cluster.
    pub fn url(&self) -> String {
        crate::redis::loopback_url(self.tls.is_some(), self.port)
    }

    /// Whether the process runs and answers.
    pub fn alive(&self) -> bool {
        self.child.is_some() && !self.frozen
    }

    /// Stops the node with SIGSTOP: a hung host or a partition, not a crash (no reset
    /// reaches its clients). Killed on drop as the others.
    pub fn freeze(&mut self) {
        if let Some(c) = &self.child {
            let stopped = Command::new("kill")
                .args(["-STOP", &c.id().to_string()])
                .status();
            assert!(
                stopped.as_ref().is_ok_and(|s| s.success()),
                "kill -STOP: {stopped:?}"
            );
            self.frozen = true;
        }
    }

    /// Kills the node (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
