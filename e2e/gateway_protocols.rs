//! Every protocol the gateways carry, crossing from east to west or south with real clients:
//! gRPC unary, server streaming, bidi (lock-step) and an unknown method (Python `grpcio`);
//! WebSocket text and binary messages up to 200 KiB (Python `websockets`), on the VIP and
//! through the proxy port; 100 MiB HTTP bodies both ways and a 100 MiB raw TCP stream, byte-exact
//! and with every gateway's RSS flat (bodies stream, they are never buffered whole); HTTP/1.1
//! chunked and h2c uploads.
//!
//! The Python clients run in the venv `~/.cache/isthmus-venv` (`.ci/run` creates it and installs
//! `grpcio websockets`); without it the test fails, it never skips.

use std::future::Future;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ring::digest::{Context, Digest, SHA256};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::gateway::{Gateway, Member, mesh};

const MIB: usize = 1024 * 1024;
/// The size of the bulk transfers.
const BULK: usize = 100 * MIB;
/// The size of the chunked and h2c uploads (not a multiple of any buffer or frame size).
const SMALL: usize = 3 * MIB + 12345;
/// How much a gateway's RSS may grow while a bulk transfer runs through it.
const RSS_HEADROOM_KIB: u64 = 64 * 1024;

/// A generic gRPC client: no generated code, messages `{ string text = 1; }` encoded by hand.
/// Prints one JSON object with what each call returned (or the error it raised).
const GRPC_CLIENT: &str = r#"
import json, queue, sys, traceback
import grpc

def enc(text):
    b = text.encode()
    n, v = len(b), bytearray()
    while True:
        x, n = n & 0x7F, n >> 7
        if n:
            v.append(x | 0x80)
        else:
            v.append(x)
            break
    return b"\x0a" + bytes(v) + b

def dec(msg):
    if not msg:
        return ""
    if msg[0] != 0x0A:
        raise ValueError("not field 1: %r" % msg[:8])
    n = shift = 0
    i = 1
    while True:
        x = msg[i]
        i += 1
        n |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            break
    if len(msg) != i + n:
        raise ValueError("length %d, message %d" % (n, len(msg) - i))
    return msg[i:].decode()

target, count, chats, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}

def section(name, fn):
    try:
        out[name] = fn()
    except grpc.RpcError as e:
        out[name] = {"rpc_error": e.code().name, "details": e.details()}
    except Exception:
        out[name] = {"error": traceback.format_exc()}

with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as ch:
    grpc.channel_ready_future(ch).result(timeout=15)

    say = ch.unary_unary("/isthmus.demo.Echo/Say")
    def unary():
        replies = []
        for i in range(4):
            reply, call = say.with_call(enc("hello %d" % i), timeout=15)
            replies.append({"text": dec(reply), "code": call.code().name})
        return replies
    section("say", unary)

    def unary_big():
        text = "b" * big
        reply, call = say.with_call(enc(text), timeout=15)
        got = dec(reply)
        return {"len": len(got), "exact": got.endswith(": " + text), "code": call.code().name}
    section("say_big", unary_big)

    def server_streaming():
        it = ch.unary_stream("/isthmus.demo.Echo/Count")(enc(str(count)), timeout=20)
        replies = [dec(m) for m in it]
        return {"replies": replies, "code": it.code().name}
    section("count", server_streaming)

    def bidi():
        # Lock-step: the next message is sent only once the reply to the previous one arrived,
        # so a hop that waits for the end of the request stream would hang (and time out).
        q = queue.Queue()
        def requests():
            while True:
                m = q.get()
                if m is None:
                    return
                yield m
        responses = ch.stream_stream("/isthmus.demo.Echo/Chat")(requests(), timeout=20)
        replies = []
        for i in range(chats):
            q.put(enc("msg %d" % i))
            replies.append(dec(next(responses)))
        q.put(None)
        extra = [dec(m) for m in responses]
        return {"replies": replies, "extra": extra, "code": responses.code().name}
    section("chat", bidi)

    def unknown():
        try:
            ch.unary_unary("/isthmus.demo.Echo/Nope")(enc("x"), timeout=15)
            return {"code": "OK"}
        except grpc.RpcError as e:
            return {"code": e.code().name, "number": e.code().value[0], "details": e.details()}
    section("nope", unknown)

print(json.dumps(out))
"#;

/// A WebSocket client: sends text and binary messages one by one and then pipelined, expects
/// each back exactly, pings, closes. Prints one JSON object.
const WS_CLIENT: &str = r#"
import json, os, sys, traceback
from websockets.sync.client import connect

uri = sys.argv[1]
proxy = sys.argv[2] if len(sys.argv) > 2 else None
out = {"checks": []}
try:
    with connect(uri, proxy=proxy, max_size=4 * 1024 * 1024, open_timeout=15, close_timeout=10) as ws:
        out["response_extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        messages = [
            "hello",
            "\u00fcn\u00efc\u00f6d\u00e9 \u2713",
            "t" * 70000,
            os.urandom(1),
            os.urandom(125),
            os.urandom(126),
            os.urandom(65536),
            os.urandom(200 * 1024),
        ]
        for m in messages:
            ws.send(m)
            r = ws.recv(timeout=15)
            out["checks"].append({
                "kind": "text" if isinstance(m, str) else "binary",
                "len": len(m),
                "ok": type(r) is type(m) and r == m,
            })
        burst = [os.urandom(4096 + i) for i in range(20)]
        for m in burst:
            ws.send(m)
        back = [ws.recv(timeout=15) for _ in burst]
        out["checks"].append({"kind": "pipelined", "len": len(burst), "ok": back == burst})
        out["pong"] = ws.ping().wait(10)
    out["close_code"] = ws.close_code
except Exception:
    out["error"] = traceback.format_exc()
print(json.dumps(out))
"#;

/// The venv's Python. A missing venv fails the test with how to make it.
pub(crate) fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let python = Path::new(&home).join(".cache/isthmus-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the gRPC and WebSocket clients of this test need it. Create it with \
         `python3 -m venv ~/.cache/isthmus-venv && ~/.cache/isthmus-venv/bin/pip install grpcio \
         websockets` (or run .ci/run)",
        python.display()
    );
    python
}

/// Runs `script` with the venv's Python; its stdout is one JSON object.
pub(crate) async fn python(dir: &Path, name: &str, script: &str, args: &[String]) -> Value {
    let path = dir.join(name);
    std::fs::write(&path, script).expect("write the client script");
    let run = tokio::process::Command::new(venv_python())
        .arg(&path)
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("grpc_proxy")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within 90 s"))
        .expect("run the venv's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}); is the venv complete (`~/.cache/isthmus-venv/bin/pip install grpcio \
         websockets`)?\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{name}: {e}: stdout {stdout:?}, stderr {stderr:?}"))
}

/// curl, not through any proxy of the environment; (exit code, stdout, stderr).
async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl is installed (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hex(d: &Digest) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 and size of a file.
fn file_sha256(path: &Path) -> (String, u64) {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; MIB];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    (hex(&ctx.finish()), size)
}

/// A file of `size` random bytes; its SHA-256.
fn random_file(path: &Path, size: usize) -> String {
    use std::io::Write as _;
    let rng = SystemRandom::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]).expect("random bytes");
        ctx.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
    hex(&ctx.finish())
}

/// Peak RSS (KiB) of each gateway while `fut` runs, sampled every 100 ms.
async fn with_rss_peaks<T>(gws: &[&Gateway], fut: impl Future<Output = T>) -> (T, Vec<u64>) {
    let mut peaks: Vec<u64> = gws.iter().map(|g| g.rss_kib()).collect();
    let sample = |peaks: &mut Vec<u64>| {
        for (p, g) in peaks.iter_mut().zip(gws) {
            *p = (*p).max(g.rss_kib());
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => {
                sample(&mut peaks);
                return (out, peaks);
            }
            _ = tick.tick() => sample(&mut peaks),
        }
    }
}

/// Asserts that no gateway's RSS grew by more than the headroom over its baseline.
fn assert_flat(what: &str, m: &[Member], served_by: &str, baseline: &[u64], peaks: &[u64]) {
    let report: Vec<String> = m
        .iter()
        .zip(baseline.iter().zip(peaks))
        .map(|(x, (b, p))| format!("{}: {b} -> {p} KiB", x.fed.name))
        .collect();
    eprintln!("{what} (served by {served_by}): gateway RSS {report:?}");
    for (x, (b, p)) in m.iter().zip(baseline.iter().zip(peaks)) {
        assert!(
            *p < b + RSS_HEADROOM_KIB,
            "{what}: the {} gateway grew from {b} KiB to {p} KiB (more than {RSS_HEADROOM_KIB} \
             KiB): a body or stream is buffered instead of streamed (served by {served_by}; all: \
             {report:?})",
            x.fed.name
        );
    }
}

fn rss_all(m: &[Member]) -> Vec<u64> {
    m.iter().map(|x| x.gw.rss_kib()).collect()
}

/// The last access-log line of `gw` on `side` matching `pred`, once it is written.
async fn access_line(gw: &Gateway, side: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = gw
            .access_log()
            .into_iter()
            .rev()
            .find(|l| l["side"] == side && pred(l))
        {
            return l;
        }
        if Instant::now() > deadline {
            gw.fail(&format!(
                "no matching {side} access-log line: {:?}",
                gw.access_log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// East's outbound line for a bulk transfer (`pred`) counted every byte both ways, and so did
/// the inbound line of the cluster that served it; that cluster's name.
async fn bulk_lines(m: &[Member], what: &str, pred: impl Fn(&Value) -> bool) -> String {
    let bulk = BULK as u64;
    let out = access_line(&m[0].gw, "outbound", |l| pred(l) && l["bytes_in"] == bulk).await;
    assert_eq!(out["bytes_out"], bulk, "{what}: {out}");
    let server = out["dst_cluster"]
        .as_str()
        .expect("dst_cluster")
        .to_string();
    let served = m
        .iter()
        .find(|x| x.fed.name == server)
        .unwrap_or_else(|| panic!("{what}: served by an unknown cluster: {out}"));
    assert!(["west", "south"].contains(&server.as_str()), "{out}");
    let inb = access_line(&served.gw, "inbound", |l| {
        pred(l) && l["src_cluster"] == "east" && l["bytes_in"] == bulk
    })
    .await;
    assert_eq!(inb["bytes_out"], bulk, "{what}: {inb}");
    server
}

fn served_by(reply: &str) -> &str {
    let cluster = reply.split(": ").next().unwrap_or_default();
    assert!(
        ["west", "south"].contains(&cluster),
        "a reply from {cluster:?}, not from west or south: {reply:?}"
    );
    cluster
}

async fn grpc_checks(dir: &Path, vip: IpAddr) {
    let (count, chats, big) = (50, 10, 256 * 1024);
    let out = python(
        dir,
        "grpc_client.py",
        GRPC_CLIENT,
        &[
            format!("{vip}:50051"),
            count.to_string(),
            chats.to_string(),
            big.to_string(),
        ],
    )
    .await;
    eprintln!(
        "gRPC client: say {} / count code {} / chat {} / nope {}",
        out["say"], out["count"]["code"], out["chat"]["replies"], out["nope"]
    );

    // Unary.
    let say = out["say"]
        .as_array()
        .unwrap_or_else(|| panic!("Say failed: {out}"));
    assert_eq!(say.len(), 4, "{out}");
    for (i, r) in say.iter().enumerate() {
        let text = r["text"].as_str().unwrap_or_default();
        let cluster = served_by(text);
        assert_eq!(text, format!("{cluster}: hello {i}"), "{out}");
        assert_eq!(r["code"], "OK", "{out}");
    }
    // A large unary message: many DATA frames on each hop.
    assert_eq!(out["say_big"]["exact"], true, "{}", out["say_big"]);
    assert_eq!(out["say_big"]["code"], "OK", "{}", out["say_big"]);

    // Server streaming: exactly `count` replies, in order, then status OK.
    let replies: Vec<&str> = out["count"]["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("Count failed: {}", out["count"]))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(replies.len(), count, "{}", out["count"]);
    let cluster = served_by(replies[0]);
    let want: Vec<String> = (1..=count).map(|i| format!("{cluster}: {i}")).collect();
    assert_eq!(replies, want, "the stream is complete and in order");
    assert_eq!(out["count"]["code"], "OK", "{}", out["count"]);

    // Bidi, lock-step: one reply per message, each before the next message was sent.
    let chat = &out["chat"];
    let replies: Vec<&str> = chat["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("Chat failed: {chat}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(replies.len(), chats, "{chat}");
    let cluster = served_by(replies[0]);
    let want: Vec<String> = (0..chats).map(|i| format!("{cluster}: msg {i}")).collect();
    assert_eq!(replies, want, "{chat}");
    assert_eq!(
        chat["extra"],
        json!([]),
        "no reply without a message: {chat}"
    );
    assert_eq!(chat["code"], "OK", "{chat}");

    // An unknown method: the backend's grpc-status 12 in the trailers reached the client over
    // both hops.
    assert_eq!(out["nope"]["code"], "UNIMPLEMENTED", "{}", out["nope"]);
    assert_eq!(out["nope"]["number"], 12, "{}", out["nope"]);
}

async fn websocket_checks(dir: &Path, vip: IpAddr, proxy: SocketAddr) {
    for (how, args) in [
        ("VIP", vec![format!("ws://{vip}:8080/ws")]),
        (
            "proxy port",
            vec![
                "ws://echo.demo.svc.clusterset.local:8080/ws".to_string(),
                format!("http://{proxy}"),
            ],
        ),
    ] {
        let out = python(dir, "ws_client.py", WS_CLIENT, &args).await;
        eprintln!("WebSocket through the {how}: {out}");
        assert!(
            out.get("error").is_none(),
            "WebSocket through the {how}: {out}"
        );
        let checks = out["checks"].as_array().expect("checks");
        assert_eq!(checks.len(), 9, "{out}");
        for c in checks {
            assert_eq!(c["ok"], true, "WebSocket through the {how}: {c} in {out}");
        }
        assert_eq!(out["pong"], true, "{out}");
        assert_eq!(out["close_code"], 1000, "a clean close: {out}");
    }
}

/// POSTs `file` to /echo with curl (`extra` args first); returns the echoed file's hash and
/// size, what curl reported (`%{http_code} %{http_version} %{size_upload}`) and its stderr.
async fn post_echo(
    url: &str,
    file: &Path,
    out: &Path,
    extra: &[&str],
) -> (String, u64, String, String) {
    let data = format!("@{}", file.display());
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "--data-binary",
        &data,
        "-H",
        "content-type: application/octet-stream",
        "-o",
        out.to_str().expect("utf-8"),
        "-w",
        "%{http_code} %{http_version} %{size_upload}",
        url,
    ]);
    let (code, stdout, stderr) = curl(&args).await;
    assert_eq!(code, 0, "curl {args:?}: {stdout} {stderr}");
    let (sha, size) = file_sha256(out);
    (sha, size, stdout, stderr)
}

async fn http_bulk_checks(m: &[Member], dir: &Path, vip: IpAddr) {
    let east = &m[0];
    let gws: Vec<&Gateway> = m.iter().map(|x| &x.gw).collect();
    let input = dir.join("in.bin");
    let output = dir.join("out.bin");
    let started = Instant::now();
    let sent = random_file(&input, BULK);
    eprintln!("100 MiB random file written in {:?}", started.elapsed());

    // Warm up the connections so the baseline includes them.
    let (code, _, stderr) = curl(&["-o", "/dev/null", &format!("http://{vip}:8080/")]).await;
    assert_eq!(code, 0, "{stderr}");

    // 100 MiB up and echoed back down, streamed through both gateways, from an HTTP/1.1 client
    // (which sends `Expect: 100-continue`) and from an h2c one.
    for (version, args, want) in [
        ("HTTP/1.1", &["--http1.1"][..], "200 1.1 "),
        ("h2c", &["--http2-prior-knowledge"][..], "200 2 "),
    ] {
        let what = format!("100 MiB POST /echo over {version}");
        let path = format!("/echo?bulk={}", want.trim().replace(' ', "-"));
        let url = format!("http://{vip}:8080{path}");
        let baseline = rss_all(m);
        let started = Instant::now();
        let ((got, size, w, _), peaks) =
            with_rss_peaks(&gws, post_echo(&url, &input, &output, args)).await;
        eprintln!("{what} in {:?}: {w}", started.elapsed());
        assert!(w.starts_with(want), "{what}: {w}");
        assert_eq!(
            size, BULK as u64,
            "{what}: the echoed body has the size sent"
        );
        assert_eq!(got, sent, "{what}: the echoed body is byte-exact");
        let server = bulk_lines(m, &what, |l| l["path"] == path.as_str()).await;
        assert_flat(&what, m, &server, &baseline, &peaks);
    }

    // 100 MiB down.
    let baseline = rss_all(m);
    let bytes_url = format!("http://{vip}:8080/bytes?n={BULK}");
    let started = Instant::now();
    let ((code, w, stderr), peaks) = with_rss_peaks(
        &gws,
        curl(&[
            "-o",
            output.to_str().expect("utf-8"),
            "-w",
            "%{http_code} %{size_download}",
            &bytes_url,
        ]),
    )
    .await;
    eprintln!("GET /bytes?n={BULK} in {:?}: {w}", started.elapsed());
    assert_eq!(code, 0, "{w} {stderr}");
    assert_eq!(w, format!("200 {BULK}"));
    let (got, size) = file_sha256(&output);
    assert_eq!(size, BULK as u64);
    let mut ctx = Context::new(&SHA256);
    let chunk = vec![b'x'; MIB];
    for _ in 0..BULK / MIB {
        ctx.update(&chunk);
    }
    assert_eq!(got, hex(&ctx.finish()), "the body is BULK bytes of 'x'");
    let path = format!("/bytes?n={BULK}");
    // The request has no body: the inbound line counts the response only.
    let out = access_line(&east.gw, "outbound", |l| l["path"] == path.as_str()).await;
    assert_eq!(out["bytes_out"], BULK as u64, "{out}");
    let server = out["dst_cluster"]
        .as_str()
        .expect("dst_cluster")
        .to_string();
    let served = m.iter().find(|x| x.fed.name == server).expect("server");
    let inb = access_line(&served.gw, "inbound", |l| l["path"] == path.as_str()).await;
    assert_eq!(inb["bytes_out"], BULK as u64, "{inb}");
    assert_flat("100 MiB GET /bytes", m, &server, &baseline, &peaks);
}

async fn tcp_bulk_check(m: &[Member], vip: IpAddr) {
    let gws: Vec<&Gateway> = m.iter().map(|x| &x.gw).collect();
    let baseline = rss_all(m);
    let transfer = async {
        let stream = tokio::net::TcpStream::connect((vip, 9000))
            .await
            .expect("connect to the tcp-echo VIP");
        stream.set_nodelay(true).expect("nodelay");
        let (mut rd, mut wr) = stream.into_split();
        let write = async move {
            let rng = SystemRandom::new();
            let mut ctx = Context::new(&SHA256);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = BULK;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill(&mut buf[..n]).expect("random bytes");
                ctx.update(&buf[..n]);
                wr.write_all(&buf[..n]).await?;
                left -= n;
            }
            // Half-close: the echo ends when our end does.
            wr.shutdown().await?;
            Ok::<_, std::io::Error>(ctx.finish())
        };
        let read = async move {
            let mut ctx = Context::new(&SHA256);
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                got += n;
            }
            Ok::<_, std::io::Error>((got, ctx.finish()))
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            tokio::try_join!(write, read)
        })
        .await
    };
    let started = Instant::now();
    let (result, peaks) = with_rss_peaks(&gws, transfer).await;
    let (sent, (got, echoed)) = result
        .unwrap_or_else(|_| {
            m[0].gw
                .fail("the 100 MiB TCP echo did not finish within 60 s")
        })
        .unwrap_or_else(|e| m[0].gw.fail(&format!("the 100 MiB TCP echo failed: {e}")));
    eprintln!("100 MiB TCP echo in {:?}", started.elapsed());
    assert_eq!(got, BULK, "the echo has the size sent");
    assert_eq!(hex(&echoed), hex(&sent), "the echo is byte-exact");
    let server = bulk_lines(m, "TCP echo", |l| {
        l["protocol"] == "tcp" && l["service"] == "tcp-echo.demo"
    })
    .await;
    assert_flat("100 MiB TCP echo", m, &server, &baseline, &peaks);
}

async fn chunked_and_h2c_checks(dir: &Path, vip: IpAddr) {
    let input = dir.join("small.bin");
    let output = dir.join("small.out");
    let sent = random_file(&input, SMALL);
    let url = format!("http://{vip}:8080/echo");

    let (got, size, w, verbose) = post_echo(
        &url,
        &input,
        &output,
        &["-v", "--http1.1", "-H", "transfer-encoding: chunked"],
    )
    .await;
    let sent_head: Vec<&str> = verbose.lines().filter(|l| l.starts_with("> ")).collect();
    assert!(
        sent_head
            .iter()
            .any(|l| l.eq_ignore_ascii_case("> transfer-encoding: chunked"))
            && !sent_head
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with("> content-length")),
        "curl sent a chunked body: {sent_head:?}"
    );
    assert!(w.starts_with("200 1.1 "), "{w}");
    assert_eq!(size, SMALL as u64, "chunked upload echoed whole");
    assert_eq!(got, sent, "chunked upload echoed byte-exact");

    let (got, size, w, _) = post_echo(&url, &input, &output, &["--http2-prior-knowledge"]).await;
    assert!(w.starts_with("200 2 "), "{w}");
    assert_eq!(size, SMALL as u64, "h2c upload echoed whole");
    assert_eq!(got, sent, "h2c upload echoed byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_of_every_protocol_cross_clusters() {
    // Fail at once, before any process starts, when the clients cannot run.
    venv_python();
    let m = mesh(74, "", json!({}), json!({})).await;
    let east = &m[0];
    let dir = tempfile::Builder::new()
        .prefix("isthmus-e2e-protocols-")
        .tempdir()
        .expect("temp dir");
    let grpc_vip = east.vip("demo/grpc-echo").await;
    let echo_vip = east.vip("demo/echo").await;
    let tcp_vip = east.vip("demo/tcp-echo").await;

    let t = Instant::now();
    grpc_checks(dir.path(), grpc_vip).await;
    eprintln!("gRPC checks: {:?}", t.elapsed());

    let t = Instant::now();
    websocket_checks(dir.path(), echo_vip, east.gw.proxy).await;
    eprintln!("WebSocket checks: {:?}", t.elapsed());

    let t = Instant::now();
    chunked_and_h2c_checks(dir.path(), echo_vip).await;
    eprintln!("chunked and h2c checks: {:?}", t.elapsed());

    let t = Instant::now();
    http_bulk_checks(&m, dir.path(), echo_vip).await;
    eprintln!("HTTP bulk checks: {:?}", t.elapsed());

    let t = Instant::now();
    tcp_bulk_check(&m, tcp_vip).await;
    eprintln!("TCP bulk check: {:?}", t.elapsed());
}
