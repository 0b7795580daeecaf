//! Test support (crate feature `testing`): a real, throwaway etcd server, or a cluster of them
//! ([`EtcdCluster`]), and a Kubernetes API server stand-in ([`kubeapi::KubeApi`]).
//!
//! Compiled only for tests; it panics on setup failures, because a test that cannot build its
//! fixture must fail loudly, never pass silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod etcd_cluster;
pub mod kubeapi;
pub use etcd_cluster::EtcdCluster;

/// How long a fresh or restarted etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A single-member etcd on free loopback ports with its own temporary data dir. Killed (SIGKILL)
/// on drop. The binary is `$ISTHMUS_ETCD_BIN` or `etcd` from `PATH`.
pub struct EtcdServer {
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    ///
    /// # Panics
    /// When the `etcd` binary is missing ("install etcd-server") or etcd does not become
    /// healthy within 20 s.
    pub async fn start() -> EtcdServer {
        let dir = tempfile::tempdir().expect("create a temp dir for etcd");
        let client = free_port();
        let peer = free_port();
        let mut server = EtcdServer {
            child: None,
            client,
            peer,
            dir,
        };
        server.spawn_and_wait().await;
        server
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// The data dir (kept across [`Self::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILL, no shutdown: whatever etcd acknowledged must survive.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data dir and ports (kills it first if it runs).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }

    async fn spawn_and_wait(&mut self) {
        let bin = std::env::var_os("ISTHMUS_ETCD_BIN").unwrap_or_else(|| "etcd".into());
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create etcd.log");
        let client_url = self.endpoint();
        let peer_url = format!("http://{}", self.peer);
        let mut cmd = Command::new(&bin);
        cmd.arg("--name=isthmus-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=isthmus-test={peer_url}"))
            .arg("--initial-cluster-state=new");
        let child = spawn_etcd(&mut cmd, &bin, log);
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "etcd exited with {status} during start; log:\n{}",
                    tail(&log_path)
                );
            }
            let addr = self.client;
            let healthy = tokio::task::spawn_blocking(move || healthy(addr))
                .await
                .unwrap_or(false);
            if healthy {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd did not become healthy at {} within {START_TIMEOUT:?}; log:\n{}",
                    self.endpoint(),
                    tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener
        .local_addr()
        .expect("local addr of a bound listener")
}

/// `GET /health` answered with `"health":"true"`.
pub(crate) fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

pub(crate) fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Starts a prepared etcd command with its output in `log` (quiet, zap logger); a missing
/// binary fails loudly with what to install: etcd tests never skip.
pub(crate) fn spawn_etcd(cmd: &mut Command, bin: &std::ffi::OsStr, log: std::fs::File) -> Child {
    let spawned = cmd
        .arg("--logger=zap")
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the etcd binary {bin:?} was not found: install etcd-server (Debian: apt-get install \
             etcd-server) or point ISTHMUS_ETCD_BIN at it; etcd tests never skip"
        ),
        Err(e) => panic!("could not start etcd {bin:?}: {e}"),
    }
}
