//! Data plane, fast lane: a node's answer after its head: the body relayed in its framing
//! (copied, or spliced when long), and a small 503 read whole for Kuzzle's "not executed".

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::wire::{self, Framing};
use super::{splice, Failure, Job, Lane, Rewind, COPY_WITH_HEAD, RELAY_CHUNK};
use crate::core::backend::Backend;
use crate::data::proxy::error::ProxyError;
use crate::data::proxy::resend;

impl<S: Rewind> Lane<'_, S> {
    /// The body after the head in `out` (the head included): Ok((payload bytes, the node
    /// connection may carry another request)), or Err((payload bytes, access log termination))
    /// when it was cut. `close`: the connection ends after this answer.
    pub(super) async fn relay(
        &mut self,
        cfg: &crate::control::config::Config,
        stream: &mut TcpStream,
        framing: Framing,
        len: usize,
        close: bool,
    ) -> Result<(u64, bool), (u64, &'static str)> {
        let wait = cfg.timeouts.server.0;
        let cut = |p: u64| move |_| (p, "CD");
        match framing {
            Framing::None => {
                self.write_out(close).await.map_err(cut(0))?;
                Ok((0, self.nbuf.len() == len))
            }
            Framing::Length(total) => {
                let avail = ((self.nbuf.len() - len) as u64).min(total) as usize;
                let extra = self.nbuf.len() - len > avail;
                self.write_head_and(len, avail, close && avail as u64 == total).await.map_err(cut(0))?;
                let mut left = total - avail as u64;
                let mut sent = avail as u64;
                if left > 0 {
                    self.no_delay();
                }
                // A long body on a plain client connection: node to client in the kernel.
                if let Some(client) = self.io.get_ref().plain().filter(|_| left >= splice::SPLICE_FROM) {
                    // No pipe to be had (descriptors short): copied as below.
                    if let Ok(moved) = splice::relay(stream, client, left, wait, self.io.limit()).await {
                        return moved.map(|n| (sent + n, true)).map_err(|(n, why)| (sent + n, why));
                    }
                }
                while left > 0 {
                    self.nbuf.clear();
                    self.nbuf.reserve(RELAY_CHUNK.min(left as usize));
                    let n = match self.node_read(stream, tokio::time::Instant::now() + wait).await {
                        Ok(0) | Err(Some(_)) => return Err((sent, "SD")),
                        Err(None) => return Err((sent, "sD")),
                        Ok(n) => n,
                    };
                    let take = (n as u64).min(left) as usize;
                    self.io.write_all(&self.nbuf[..take]).await.map_err(cut(sent))?;
                    sent += take as u64;
                    left -= take as u64;
                    if take < n {
                        // More than Content-Length: the connection is no longer in step.
                        return Ok((sent, false));
                    }
                }
                Ok((sent, !extra))
            }
            Framing::Chunked => {
                let mut chunks = wire::Chunks::default();
                let mut from = len;
                let mut first = true;
                loop {
                    let end = match chunks.feed(&self.nbuf[from..]) {
                        Ok(e) => e,
                        Err(_) => return Err((chunks.payload, "SD")),
                    };
                    let upto = end.map_or(self.nbuf.len(), |e| from + e);
                    if first {
                        self.write_head_and(len, upto - len, false).await.map_err(cut(0))?;
                        first = false;
                        self.no_delay();
                    } else {
                        self.io.write_all(&self.nbuf[from..upto]).await.map_err(cut(chunks.payload))?;
                    }
                    if end.is_some() {
                        return Ok((chunks.payload, upto == self.nbuf.len()));
                    }
                    self.nbuf.clear();
                    from = 0;
                    match self.node_read(stream, tokio::time::Instant::now() + wait).await {
                        Ok(0) | Err(Some(_)) => return Err((chunks.payload, "SD")),
                        Err(None) => return Err((chunks.payload, "sD")),
                        Ok(_) => {}
                    }
                }
            }
            Framing::UntilClose => {
                // Sent on chunked: each read becomes a chunk; the node's close, the last one.
                let mut sent = 0u64;
                let mut data = self.nbuf.len() - len;
                let mut from = len;
                loop {
                    if data > 0 {
                        wire::chunk_header(data, &mut self.out);
                        self.out.extend_from_slice(&self.nbuf[from..from + data]);
                        self.out.extend_from_slice(b"\r\n");
                        sent += data as u64;
                    }
                    if !self.out.is_empty() {
                        self.io.write_all(&self.out).await.map_err(cut(sent))?;
                        self.out.clear();
                        self.no_delay();
                    }
                    self.nbuf.clear();
                    from = 0;
                    data = match self.node_read(stream, tokio::time::Instant::now() + wait).await {
                        Ok(0) => break,
                        Err(Some(_)) => return Err((sent, "SD")),
                        Err(None) => return Err((sent, "sD")),
                        Ok(n) => n,
                    };
                }
                self.io.write_all(b"0\r\n\r\n").await.map_err(cut(sent))?;
                Ok((sent, false))
            }
        }
    }

    /// Write the head in `out` with the `n` body bytes after the node's head (`nbuf[len..]`): in
    /// one write when they are few. `last`: nothing follows them on this connection.
    pub(super) async fn write_head_and(&mut self, len: usize, n: usize, last: bool) -> std::io::Result<()> {
        if n <= COPY_WITH_HEAD {
            self.out.extend_from_slice(&self.nbuf[len..len + n]);
            return self.write_out(last).await;
        }
        self.io.write_all(&self.out).await?;
        self.no_delay();
        self.io.write_all(&self.nbuf[len..len + n]).await
    }

    /// A node's small 503, read whole to learn whether Kuzzle refused the request unexecuted
    /// (then another node may take it); anything else goes to the client as it came.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refusal(
        &mut self,
        cfg: &crate::control::config::Config,
        node: &Arc<Backend>,
        mut stream: TcpStream,
        status: u16,
        len: usize,
        n: u64,
        closes: bool,
        close: bool,
        job: &mut Job,
    ) -> Result<bool, Failure> {
        let n = n as usize;
        let deadline = tokio::time::Instant::now() + cfg.timeouts.server.0;
        while self.nbuf.len() < len + n {
            match self.node_read(&mut stream, deadline).await {
                Ok(0) | Err(_) => return Err(Failure::Final(ProxyError::broke(node))),
                Ok(_) => {}
            }
        }
        node.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        // An upgrade's connection is not trusted with another request (as in `exchange`).
        if !closes && !job.upgrade && self.nbuf.len() == len + n {
            node.release_raw(stream);
        }
        self.out.extend_from_slice(&self.nbuf[len..len + n]);
        if resend::refused(node, &self.nbuf[len..len + n]) {
            return Err(Failure::Refused(std::mem::take(&mut self.out), n as u64, close));
        }
        self.ctx.core.frontend.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        let sent = self.write_out(close).await.is_ok();
        self.finish(job, status, n as u64, sent);
        Ok(sent && !close)
    }
}
