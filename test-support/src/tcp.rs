//! Raw TCP: free ports, raw byte exchanges, a counting relay in front of a node, fake nodes (any
//! script, a rude one, one that answers every request the same way).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wait::T;

/// A free TCP port on 127.0.0.1 (bound, then released; the small race is acceptable in tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port on 127.0.0.1")
}

/// Bytes on established IPv4 connections to or from local port `port` that their reader has
/// not read yet (both directions, from `/proc/net/tcp`, Linux): 0 once a server read everything
/// its clients sent (and they read its answers).
pub fn unread_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let f: Vec<&str> = l.split_whitespace().collect();
            let established = f.get(3) == Some(&"01");
            let ours = port_of(f.get(1)?) == Some(port) || port_of(f.get(2)?) == Some(port);
            let (tx, rx) = f.get(4)?.split_once(':')?;
            (established && ours)
                .then(|| u64::from_str_radix(tx, 16).unwrap_or(0) + u64::from_str_radix(rx, 16).unwrap_or(0))
        })
        .sum()
}

/// Send raw bytes, read what comes back until the peer closes or 5 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_until(addr, bytes, Duration::from_secs(5)).await.0
}

/// Send raw bytes, read until the peer closes (true) or `limit` passes (false).
pub async fn raw_until(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut s = tokio::time::timeout(T, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A TCP relay in front of a node that counts the connections it carried client traffic on
/// (health checks, recognised by their path, aside) and the bytes of `/_sim/request` calls: a
/// test's view of a proxy's connection pool. Stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    pub sim_requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const HEALTH_PATH: &[u8] = b"/_plugin/cluster/health";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let addr = l.local_addr().expect("relay addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let sim_requests = Arc::new(AtomicU64::new(0));
        let (a, u) = (accepted.clone(), sim_requests.clone());
        let task = tokio::spawn(async move {
            // Ends when the test drops the relay (abort).
            while let Ok((mut c, _)) = l.accept().await {
                let (a, u) = (a.clone(), u.clone());
                tokio::spawn(async move {
                    let Ok(n) = TcpStream::connect(to).await else { return };
                    let (mut cr, mut cw) = c.split();
                    let (mut nr, mut nw) = tokio::io::split(n);
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        let mut first = true;
                        loop {
                            let k = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => k,
                            };
                            if first && !contains(&buf[..k], HEALTH_PATH) {
                                a.fetch_add(1, Ordering::SeqCst);
                            }
                            first = false;
                            if contains(&buf[..k], b"/_sim/request") {
                                u.fetch_add(1, Ordering::SeqCst);
                            }
                            if nw.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                        let _ = nw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut nr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { addr, accepted, sim_requests, task }
    }

    /// Connections that carried client traffic so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The length of the first whole HTTP/1.1 message in `buf` (head, then a Content-Length or a
/// chunked body, or none), if it is all there. The head alone decides: an answer that has no body
/// whatever its headers say (to a HEAD; a 204 or 304) must not be read with it.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let chunked =
        head.lines().find_map(|l| l.strip_prefix("transfer-encoding:")).is_some_and(|v| v.trim().ends_with("chunked"));
    if chunked {
        // A sender may write the head and the chunks apart: the message ends after the last
        // chunk and its trailers, not at the head.
        return chunked_end(buf, end + 4);
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + 4 + len).then_some(end + 4 + len)
}

/// Where a chunked body starting at `at` ends (after the empty line closing its trailers).
fn chunked_end(buf: &[u8], mut at: usize) -> Option<usize> {
    let line = |from: usize| buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| from + p);
    loop {
        let eol = line(at)?;
        let text = String::from_utf8_lossy(&buf[at..eol]);
        let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16).ok()?;
        at = eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let eol = line(at)?;
                let empty = eol == at;
                at = eol + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if buf.len() < at {
            return None;
        }
    }
}

/// Read one whole request (head and Content-Length or chunked body) from `c`: every byte read,
/// the request and whatever came behind it in the same reads; None if the peer closed first.
pub async fn read_request(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if message_len(&got).is_some() {
            return Some(got);
        }
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A fake node on an ephemeral port of 127.0.0.1 that serves each connection with `serve`, in a
/// task of its own. Stops when the returned task is aborted (or the runtime ends).
pub async fn fake_node<F, Fut>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(serve(c));
        }
    });
    (addr, task)
}

/// A fake node that reads each whole request (head and Content-Length or chunked body), then closes without
/// answering: it may have acted on the request, so only idempotent ones may be re-sent.
/// Stops when the returned task is aborted (or the runtime ends).
pub async fn rude_node() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    // Dropped with nothing unread: the connection closes (FIN) with no answer.
    fake_node(|mut c| async move {
        let _ = read_request(&mut c).await;
    })
    .await
}

/// A fake node that answers every whole request with `status` and the JSON `body`, then closes
/// (as real Kuzzle does: `Connection: close`). Counts the requests it answered.
pub struct CannedNode {
    pub addr: SocketAddr,
    /// Request lines ("GET /_now HTTP/1.1") of the requests read whole and answered, in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CannedNode {
    pub async fn start(status: u16, body: &str) -> CannedNode {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Kuzzle-Node: undefined\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let log = seen.clone();
        let (addr, task) = fake_node(move |mut c| {
            let (reply, log) = (reply.clone(), log.clone());
            async move {
                if let Some(req) = read_request(&mut c).await {
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    let _ = c.write_all(reply.as_bytes()).await;
                }
            }
        })
        .await;
        CannedNode { addr, seen, task }
    }

    /// Requests answered whose path is not `health_path` (client traffic, not health checks).
    pub fn answered_except(&self, health_path: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|l| l.split(' ').nth(1) != Some(health_path)).count()
    }
}

impl Drop for CannedNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::message_len;

    #[test]
    fn a_chunked_message_ends_after_its_last_chunk_and_trailers() {
        let m = b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4;x=1\r\nbody\r\n0\r\nt: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let whole = m.len() - b"GET / HTTP/1.1\r\n\r\n".len();
        assert_eq!(message_len(m), Some(whole));
        for cut in [47, 50, 58, whole - 1] {
            assert_eq!(message_len(&m[..cut]), None, "cut at {cut}");
        }
        assert_eq!(message_len(b"GET / HTTP/1.1\r\ncontent-length: 2\r\n\r\nab"), Some(39));
        assert_eq!(message_len(b"GET / HTTP/1.1\r\ncontent-length: 2\r\n\r\na"), None);
    }
}
