//! DNS over TCP through hickory-server: the one adapter file that names hickory types (the
//! server API changes between minor versions; keep it all here).
//!
//! hickory-server owns the listener, RFC 1035 length framing, the per-connection idle timeout,
//! and FORMERR for requests its parser refuses. Every request it accepts is answered by the
//! same [`crate::answer::respond`] as UDP (from the raw bytes, against the current snapshot),
//! then handed back to hickory as a message to send: one source of truth for both transports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::TcpListener;

use crate::answer::{self, Transport};
use crate::server::Shared;

/// A connection that sends no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per connection.
const RESPONSE_BUFFER: usize = 32;

struct Handler {
    shared: Arc<Shared>,
}

fn serve_failed(id: u16) -> ResponseInfo {
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let mut out = Vec::with_capacity(512);
        let outcome = {
            let snap = self.shared.snapshot.load();
            answer::respond(
                &snap,
                request.as_slice(),
                request.src().ip(),
                Transport::Tcp,
                &mut out,
            )
        };
        let id = request.metadata.id;
        // Our own encoding, decoded once more so hickory can frame it; only TCP pays for this.
        let message = match Message::from_vec(&out) {
            Ok(m) if !out.is_empty() => m,
            _ => {
                self.shared.metrics.record(&outcome, started.elapsed());
                return serve_failed(id);
            }
        };
        let response = MessageResponseBuilder::new(&request.queries, message.edns.as_ref()).build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending a TCP response failed");
                serve_failed(id)
            }
        };
        self.shared.metrics.record(&outcome, started.elapsed());
        info
    }
}

/// Serves TCP on `listener` until the returned server is shut down.
pub struct TcpServer {
    server: Server<Handler>,
}

impl TcpServer {
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let mut server = Server::new(Handler { shared });
        server.register_listener(listener, IDLE_TIMEOUT, RESPONSE_BUFFER);
        Self { server }
    }

    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::debug!(%error, "DNS TCP server stopped with an error");
        }
    }
}
