//! The load tool of the proxy benchmark (`e2e/bench/proxy.sh` drives it; not a test, not in CI).
//!
//! ```text
//! proxy load --url http://127.0.0.1:8080/1k --conns 16 --proto h1|h2 --seconds 5 [--rate 2000]
//! proxy handshakes --addr 127.0.0.1:15443 --cert c.pem --key k.pem --seconds 5 --parallel 8
//! proxy idle --addr 127.0.0.1:15443 --cert c.pem --key k.pem --count 1000 --hold 10
//! proxy gateway-cert --bootstrap file.json --out-dir dir
//! ```
//! `load` without `--rate` is closed-loop (each connection sends its next request when the last
//! answered: saturation); with `--rate` it is open-loop at that many requests per second spread
//! over the connections, and latency is measured from each request's scheduled send time, so a
//! stall shows up in the percentiles instead of silently lowering the rate. Output: one JSON line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().expect(name))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: &str, h2: bool) -> Sender {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let io = TokioIo::new(tcp);
    if h2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(c);
        Sender::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(c);
        Sender::H1(s)
    }
}

/// One request; `Err` for a transport error or a non-200.
async fn request(sender: &mut Sender, uri: &hyper::Uri, host: &str) -> Result<u64, String> {
    let mut builder = hyper::Request::get(uri.clone());
    if matches!(sender, Sender::H1(_)) {
        // HTTP/2 carries the authority in `:authority` (from the URI); a `host` header as well
        // is refused by some servers.
        builder = builder.header("host", host);
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(req).await
        }
        Sender::H2(s) => s.send_request(req).await,
    }
    .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(body.to_bytes().len() as u64)
}

/// Latency samples in microseconds.
#[derive(Default)]
struct Samples(Vec<u32>);

impl Samples {
    fn pct(&mut self, p: f64) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i]
    }
}

async fn load(args: &[String]) {
    let url: hyper::Uri = arg(args, "--url").expect("--url").parse().expect("url");
    let authority = url.authority().expect("authority").to_string();
    let conns = num(args, "--conns", 16) as usize;
    let h2 = arg(args, "--proto").as_deref() == Some("h2");
    let seconds = num(args, "--seconds", 5);
    let rate = num(args, "--rate", 0);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, authority, errors) = (url.clone(), authority.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority, h2).await;
            let mut samples = Samples::default();
            // Open loop: this connection's share of the rate, phase-shifted per connection.
            let interval = (rate > 0).then(|| Duration::from_secs_f64(conns as f64 / rate as f64));
            let mut next =
                started + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / conns as f64));
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let scheduled = match interval {
                    Some(i) => {
                        let s = next;
                        next += i;
                        if s > now {
                            // On time: the timer's own lateness (about 1 ms) is not the
                            // server's; latency counts from the actual send.
                            tokio::time::sleep(s - now).await;
                            Instant::now()
                        } else {
                            // Late because the previous response was slow: count from when
                            // this request should have gone out (no coordinated omission).
                            s
                        }
                    }
                    None => now,
                };
                match request(&mut sender, &url, &authority).await {
                    Ok(_) => samples
                        .0
                        .push(u32::try_from(scheduled.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e}");
                        }
                        sender = connect(&authority, h2).await;
                    }
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.0.extend(t.await.expect("task").0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = all.0.len();
    let over_10ms = all.0.iter().filter(|us| **us > 10_000).count();
    println!(
        "{}",
        json!({
            "requests": n,
            "errors": errors.load(Ordering::Relaxed),
            "rps": (n as f64 / elapsed).round(),
            "p50_us": all.pct(0.50),
            "p99_us": all.pct(0.99),
            "p999_us": all.pct(0.999),
            "max_us": all.pct(1.0),
            "over_10ms": over_10ms,
        })
    );
}

/// Accepts any server certificate: the benchmark measures the server's handshake cost, and the
/// client's own verification would only load the load generator's core.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client(args: &[String]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(arg(args, "--cert").expect("--cert"))
            .expect("cert file")
            .map(|c| c.expect("cert"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(arg(args, "--key").expect("--key")).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    // nginx's second hop speaks only HTTP/1.1 and fails a handshake that offers nothing it
    // speaks; the others pick h2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshakes(args: &[String]) {
    let addr = arg(args, "--addr").expect("--addr");
    let seconds = num(args, "--seconds", 5);
    let parallel = num(args, "--parallel", 8);
    let tls = tls_client(args);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (addr, tls, done, failed) = (addr.clone(), tls.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ok = async {
                    let tcp = TcpStream::connect(&addr).await.ok()?;
                    tcp.set_nodelay(true).ok()?;
                    let name = ServerName::try_from("isthmus.invalid").ok()?;
                    let mut s = tls.connect(name, tcp).await.ok()?;
                    // TLS 1.3: the server verifies the client's certificate after the client's
                    // Finished; a round trip proves the server accepted it.
                    use tokio::io::AsyncWriteExt as _;
                    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                        .await
                        .ok()?;
                    use tokio::io::AsyncReadExt as _;
                    let mut b = [0u8; 9];
                    s.read_exact(&mut b).await.ok()?;
                    Some(())
                }
                .await;
                if ok.is_some() {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "handshakes": n,
            "failed": failed.load(Ordering::Relaxed),
            "per_sec": (n as f64 / started.elapsed().as_secs_f64()).round(),
        })
    );
}

async fn idle(args: &[String]) {
    let addr = arg(args, "--addr").expect("--addr");
    let count = num(args, "--count", 1000);
    let hold = num(args, "--hold", 10);
    let tls = tls_client(args);
    let mut held = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        let attempt = async {
            let tcp = TcpStream::connect(&addr).await.ok()?;
            let s = tls
                .connect(ServerName::try_from("isthmus.invalid").ok()?, tcp)
                .await
                .ok()?;
            let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                TokioExecutor::new(),
                TokioIo::new(s),
            )
            .await
            .ok()?;
            tokio::spawn(conn);
            Some(sender)
        };
        match attempt.await {
            Some(s) => held.push(s),
            None => failed += 1,
        }
    }
    println!("{}", json!({ "open": held.len(), "failed": failed }));
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let open = held.iter().filter(|s| !s.is_closed()).count();
    println!("{}", json!({ "still_open": open }));
}

/// Obtains a real gateway certificate with a bootstrap file (the key never leaves this
/// process until written to `--out-dir`): for handshake and idle-connection runs.
async fn gateway_cert(args: &[String]) {
    let file: isthmus_federation::gwapi::BootstrapFile = serde_json::from_str(
        &std::fs::read_to_string(arg(args, "--bootstrap").expect("--bootstrap"))
            .expect("bootstrap file"),
    )
    .expect("bootstrap json");
    let out = std::path::PathBuf::from(arg(args, "--out-dir").expect("--out-dir"));
    let td: isthmus_federation::identity::TrustDomain = file.trust_domain.parse().expect("td");
    let id = isthmus_federation::identity::SpiffeId::gateway(&td, &file.gateway).expect("id");
    let (key, csr) = isthmus_federation::identity::tls::generate_key_and_csr(&id).expect("csr");
    let client = isthmus_gateway::control::ControlClient::bootstrap(&file)
        .await
        .expect("bootstrap");
    // A second CSR through the authenticated renewal call, so the key written out is ours.
    let signed = client
        .client()
        .sign_csr(isthmus_federation::proto::SignCsrRequest { csr_der: csr })
        .await
        .expect("sign")
        .into_inner();
    std::fs::write(out.join("cert.pem"), signed.chain_pem).expect("write cert");
    std::fs::write(out.join("key.pem"), key.as_bytes()).expect("write key");
    println!("{}", json!({ "id": id.to_string() }));
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("load") => runtime.block_on(load(&args)),
        Some("handshakes") => runtime.block_on(handshakes(&args)),
        Some("idle") => runtime.block_on(idle(&args)),
        Some("gateway-cert") => runtime.block_on(gateway_cert(&args)),
        _ => eprintln!("usage: see the top of e2e/bench/proxy.rs"),
    }
}
