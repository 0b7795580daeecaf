//! A real etcd cluster of several members on loopback ports, for failover tests: find the
//! leader (through etcd's maintenance API), SIGKILL it, and see the rest keep quorum.
//!
//! Like [`super::EtcdServer`], it panics on setup failures (a missing binary fails loudly).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{free_port, healthy, tail};

/// How long a fresh cluster may take until every member answers `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client: SocketAddr,
    child: Option<Child>,
}

/// Members `m0..m{n-1}` of one new cluster, each with its own data dir under one temp dir.
/// Every live member is killed (SIGKILL) on drop. The binary is `$ISTHMUS_ETCD_BIN` or `etcd`.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until all answer and one leads.
    ///
    /// # Panics
    /// When the `etcd` binary is missing or the cluster does not become healthy within 30 s.
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("create a temp dir for etcd");
        let ports: Vec<(SocketAddr, SocketAddr)> =
            (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
            .collect();
        let bin = std::env::var_os("ISTHMUS_ETCD_BIN").unwrap_or_else(|| "etcd".into());
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))
                .expect("create an etcd log");
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", dir.path().join(&name).display()))
                .arg(format!("--listen-client-urls=http://{client}"))
                .arg(format!("--advertise-client-urls=http://{client}"))
                .arg(format!("--listen-peer-urls=http://{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=isthmus-test");
            let child = super::spawn_etcd(&mut cmd, &bin, log);
            members.push(Member {
                name,
                client: *client,
                child: Some(child),
            });
        }
        let cluster = EtcdCluster { members, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let addrs: Vec<SocketAddr> = cluster.members.iter().map(|m| m.client).collect();
            let ready = tokio::task::spawn_blocking(move || {
                addrs.iter().all(|a| healthy(*a)) && addrs.iter().any(|a| is_leader(*a))
            })
            .await
            .unwrap_or(false);
            if ready {
                return cluster;
            }
            if Instant::now() > deadline {
                panic!(
                    "the etcd cluster did not become healthy within {START_TIMEOUT:?}; logs:\n{}",
                    cluster.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Client URLs of every member (dead ones too), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// The member that leads now, asked of the live members (waits up to 10 s for an election).
    ///
    /// # Panics
    /// When no live member reports itself leader within 10 s.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let addr = m.client;
                let leads = tokio::task::spawn_blocking(move || is_leader(addr))
                    .await
                    .unwrap_or(false);
                if leads {
                    return i;
                }
            }
            if Instant::now() > deadline {
                panic!("no etcd member leads; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL member `index`, no shutdown.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last log lines of every member.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = tail(&self.dir.path().join(format!("{}.log", m.name)));
                format!("--- {} ---\n{log}", m.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Asks the member at `addr` (maintenance API, JSON gateway) whether it is the leader.
fn is_leader(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let body = "{}";
    let request = format!(
        "POST /v3/maintenance/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (Some(open), Some(close)) = (response.find('{'), response.rfind('}')) else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&response[open..=close]) else {
        return false;
    };
    let me = &status["header"]["member_id"];
    me.is_string() && *me == status["leader"]
}
