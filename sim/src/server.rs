//! The node's accept loop and one task per connection (hyper http1, upgrades; whether a
//! connection serves more than one request is the `Connection` header's business, see `http`).

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Publisher;
use crate::http::{self, HttpContext};
use crate::node::Node;
use crate::ws::WsContext;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub(crate) struct Server {
    /// What each connection's service gets: node, publisher, stop tokens, task tracker.
    cx: HttpContext,
}

impl Server {
    pub fn new(
        node: Arc<Node>,
        publisher: Option<Publisher>,
        stop: CancellationToken,
        closing: CancellationToken,
        tracker: TaskTracker,
    ) -> Server {
        Server { cx: HttpContext { ws: WsContext { node, publisher, stop, closing }, tracker } }
    }

    /// Accept until the node stops; the listener is dropped (closed) when this returns.
    pub async fn run(self, listener: TcpListener) {
        let stop = self.cx.ws.stop.clone();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.cx.ws.node.stats.connection();
                    let _ = stream.set_nodelay(true);
                    let cx = self.cx.clone();
                    self.cx.tracker.spawn(async move {
                        let stop = cx.ws.stop.clone();
                        let name = cx.ws.node.name.clone();
                        let svc = service_fn(move |req| http::handle(req, cx.clone()));
                        // Keep-alive stays on in hyper: a response carrying `Connection: close`
                        // (every one, unless the node keeps connections) ends the connection.
                        let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            r = conn.with_upgrades() => {
                                if let Err(e) = r {
                                    tracing::debug!(node = %name, %peer, "http connection: {e}");
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(node = %self.cx.ws.node.name, "accept: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }
}
