//! The target-port listeners with real sockets on loopback: a port taken by another process is
//! reported (state, count) and retried, never fatal; a removed port refuses connections while
//! a connection on a port that stays is left open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::identity::{CertStore, TrustStore};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use super::Outbound;
use super::target_ports::TargetPortListeners;
use crate::fair::FairLimit;
use crate::metrics::Metrics;
use crate::refusals::RefusalLog;
use crate::table::{Import, Port, PortProtocol, Snapshot, Target, TargetPortRoute};

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn outbound() -> Arc<Outbound> {
    let (_tx, table) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    Outbound::for_tests(
        table,
        CertStore::default(),
        TrustStore::new(),
        crate::retry::Budget::default(),
    )
}

/// A snapshot whose target ports carry `cart.shop` port 8080 (HTTP).
fn snapshot(ports: &[u16]) -> Snapshot {
    let port = Port {
        port: 8080,
        protocol: PortProtocol::Http,
    };
    let import = Arc::new(Import::new("cart.shop".into(), vec![port], Vec::new()));
    let target_ports: HashMap<u16, TargetPortRoute> = ports
        .iter()
        .map(|p| {
            let route = TargetPortRoute {
                target: Target {
                    import: import.clone(),
                    pinned: None,
                },
                port,
            };
            (*p, route)
        })
        .collect();
    Snapshot {
        target_ports,
        ..Default::default()
    }
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether the server side closed `conn` within 300 ms.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_taken_port_is_reported_and_retried_and_a_removed_one_refuses() {
    let (_drain_tx, drain) = crate::serve::Drain::new();
    let metrics = Metrics::default();
    let limit = FairLimit::new(64, 64, RefusalLog::new(&metrics));
    let mut listeners = TargetPortListeners::new(outbound(), LOOPBACK, limit, drain);
    let (kept, taken) = (free_port(), free_port());
    let blocker = std::net::TcpListener::bind((LOOPBACK, taken)).expect("take the port");

    let snap = snapshot(&[kept, taken]);
    listeners.reconcile(&snap).await;
    assert_eq!((listeners.open_count(), listeners.failed_count()), (1, 1));
    let states = listeners.states(&snap);
    assert!(states[&kept].listening && states[&kept].error.is_none());
    let failed = &states[&taken];
    assert!(!failed.listening, "{failed:?}");
    assert_eq!(failed.carries, "cart.shop:8080");
    assert!(
        failed.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{failed:?}"
    );
    let mut held = TcpStream::connect(SocketAddr::new(LOOPBACK, kept))
        .await
        .expect("the open port accepts");

    // Freed: the next reconcile (the retry) binds it.
    drop(blocker);
    listeners.reconcile(&snap).await;
    assert_eq!((listeners.open_count(), listeners.failed_count()), (2, 0));
    TcpStream::connect(SocketAddr::new(LOOPBACK, taken))
        .await
        .expect("bound after the retry");

    // `taken` leaves the table: it refuses; `kept` and its open connection stay.
    listeners.reconcile(&snapshot(&[kept])).await;
    assert_eq!(listeners.open_count(), 1);
    let refused = TcpStream::connect(SocketAddr::new(LOOPBACK, taken)).await;
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        !closed(&mut held).await,
        "a connection on a kept port was closed"
    );
    TcpStream::connect(SocketAddr::new(LOOPBACK, kept))
        .await
        .expect("the kept port still accepts");
}
