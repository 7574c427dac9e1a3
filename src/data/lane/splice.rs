//! Data plane, fast lane: a long body moved from a node's socket to a plain client's through a
//! pipe with splice(2), the kernel passing its pages on without copying them into the gateway.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustix::pipe::{self, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A body this long (after what came with the head) is spliced; a shorter one is copied (a
/// pipe's system calls cost more than a copy of a few pages).
pub const SPLICE_FROM: u64 = 64 * 1024;

/// How much a pipe holds: a quarter of a MiB moves in 4 pairs of calls per MiB, and stays under
/// the per-user pipe allowance (`/proc/sys/fs/pipe-user-pages-soft`) with every worker's pool.
const PIPE_SIZE: usize = 256 * 1024;

/// Empty pipes kept per worker for the next long body (creating one costs 2 system calls).
const POOL: usize = 2;

/// Pipes open in the process, pooled or moving a body: at most `fds::SPLICE_PIPES`, which the
/// open-files reserve counts (`fds::reserve`), so splices never take the files health checks need.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A pipe: the kernel's buffer between the two sockets.
struct Pipe {
    /// Its read end (towards the client).
    read: OwnedFd,
    /// Its write end (from the node).
    write: OwnedFd,
    /// What it holds at most, as the kernel set it.
    size: usize,
}

thread_local! {
    /// The worker's empty pipes.
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe from the worker's pool, or a new one while under the process's allowance.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with_borrow_mut(Vec::pop) {
            return Ok(p);
        }
        if OPEN.fetch_add(1, Ordering::Relaxed) >= crate::control::fds::SPLICE_PIPES {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let made = pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK);
        let (read, write) = made.inspect_err(|_| {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        })?;
        // A smaller pipe (the kernel's 64 KiB) still works: only more calls per body.
        // From here on, dropping the pipe gives its place back (`Drop`).
        let mut p = Pipe { read, write, size: 0 };
        p.size = pipe::fcntl_setpipe_size(&p.write, PIPE_SIZE).or_else(|_| pipe::fcntl_getpipe_size(&p.write))?;
        Ok(p)
    }

    /// Back to the worker's pool: only an empty pipe (one cut mid-body still holds bytes and is
    /// closed), and only a few per worker, so that one worker's pool cannot hold every pipe the
    /// process may have.
    fn put_back(self) {
        PIPES.with_borrow_mut(|p| {
            if p.len() < POOL {
                p.push(self);
            }
        });
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Move `len` bytes from `node` to `client`. `Ok(len)` when whole; else the bytes the client was
/// given and why it stopped, as the access log's termination (the copy's codes): `SD` the node
/// closed or failed, `sD` it sent nothing for `[timeouts] server`, `CD` the client failed or took
/// nothing for `[timeouts] client`. `Err` before anything moved only when no pipe could be made
/// (the caller copies instead).
pub async fn relay(
    node: &TcpStream,
    client: &TcpStream,
    len: u64,
    server_wait: Duration,
    client_wait: Duration,
) -> io::Result<Result<u64, (u64, &'static str)>> {
    let p = Pipe::take()?;
    let (mut left, mut held, mut sent) = (len, 0usize, 0u64);
    // Why the node side ended early: what it gave before goes to the client first.
    let mut node_cut = None;
    let moved = loop {
        // A long body between two fast sockets never has to wait: leave the worker to its other
        // connections now and then, as tokio's own reads and writes do.
        tokio::task::coop::consume_budget().await;
        if held == 0 {
            if let Some(why) = node_cut {
                break Err((sent, why));
            }
            if left == 0 {
                break Ok(sent);
            }
        }
        // Fill: from the node while the pipe has room.
        if left > 0 && held < p.size && node_cut.is_none() {
            let want = (left.min((p.size - held) as u64)) as usize;
            let fill =
                || pipe::splice(node, None, &p.write, None, want, SpliceFlags::NONBLOCK).map_err(io::Error::from);
            // With bytes in the pipe, EAGAIN may mean the pipe's slots are full (a slot holds a
            // part of a page), not that the node has nothing: the node's readiness is kept then.
            let r = if held == 0 { node.try_io(Interest::READABLE, fill) } else { fill() };
            match r {
                Ok(0) => node_cut = Some("SD"),
                Ok(n) => {
                    held += n;
                    left -= n as u64;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if held == 0 {
                        match tokio::time::timeout(server_wait, node.readable()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => node_cut = Some("SD"),
                            Err(_) => node_cut = Some("sD"),
                        }
                        continue;
                    }
                }
                Err(_) => node_cut = Some("SD"),
            }
            if held == 0 {
                continue;
            }
        }
        // Drain: to the client. No SPLICE_F_MORE: it corks the socket, and bytes sent before the
        // node pauses would wait for the next ones (up to 200 ms) where a copy sends them at once.
        let drain = || pipe::splice(&p.read, None, client, None, held, SpliceFlags::NONBLOCK).map_err(io::Error::from);
        match client.try_io(Interest::WRITABLE, drain) {
            Ok(0) => break Err((sent, "CD")),
            Ok(n) => {
                held -= n;
                sent += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(client_wait, client.writable()).await {
                    Ok(Ok(())) => {}
                    _ => break Err((sent, "CD")),
                }
            }
            Err(_) => break Err((sent, "CD")),
        }
    };
    if held == 0 {
        p.put_back();
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected pairs: (node's end, gateway's node socket), (gateway's client socket, client).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        let mut out = Vec::new();
        for _ in 0..2 {
            let c = TcpStream::connect(a).await.expect("connect");
            let (s, _) = l.accept().await.expect("accept");
            out.push((s, c));
        }
        let second = out.pop().expect("two");
        let first = out.pop().expect("two");
        (first, second)
    }

    #[tokio::test]
    async fn a_long_body_arrives_whole_and_in_order_and_the_pipe_is_reused() {
        let ((mut node_end, gw_node), (gw_client, mut client)) = pairs().await;
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            // Beyond the length: bytes of a next answer the relay must leave in the socket.
            node_end.write_all(&sent).await.expect("node write");
            node_end.write_all(b"NEXT").await.expect("node write");
            node_end
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 3_000_000];
            client.read_exact(&mut got).await.expect("client read");
            got
        });
        let t = Duration::from_secs(5);
        let r = relay(&gw_node, &gw_client, body.len() as u64, t, t).await.expect("pipe");
        assert_eq!(r, Ok(body.len() as u64));
        assert!(reader.await.expect("reader") == body, "the body arrives as sent");
        let _node_end = writer.await.expect("writer");
        let mut next = [0u8; 4];
        let mut gw_node = gw_node;
        gw_node.read_exact(&mut next).await.expect("rest");
        assert_eq!(&next, b"NEXT", "nothing past the length was taken");
        assert_eq!(PIPES.with_borrow(Vec::len), 1, "the emptied pipe went back to the pool");
    }

    #[tokio::test]
    async fn a_node_closing_early_and_a_stalled_node_are_told_apart() {
        let ((mut node_end, gw_node), (gw_client, mut client)) = pairs().await;
        node_end.write_all(&[7u8; 100_000]).await.expect("write");
        drop(node_end);
        let drain = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = client.read_to_end(&mut v).await;
            v.len()
        });
        let t = Duration::from_secs(5);
        let r = relay(&gw_node, &gw_client, 200_000, t, t).await.expect("pipe");
        assert_eq!(r, Err((100_000, "SD")));
        drop(gw_client);
        assert_eq!(drain.await.expect("drain"), 100_000);

        let ((mut node_end, gw_node), (gw_client, _client)) = pairs().await;
        node_end.write_all(&[7u8; 10]).await.expect("write");
        let r = relay(&gw_node, &gw_client, 200_000, Duration::from_millis(200), t).await.expect("pipe");
        assert_eq!(r, Err((10, "sD")));
    }

    #[tokio::test]
    async fn what_came_before_the_node_pauses_reaches_the_client_at_once() {
        // (Review finding: SPLICE_F_MORE corked the client socket, ~200 ms per pause.)
        let ((mut node_end, gw_node), (gw_client, mut client)) = pairs().await;
        gw_client.set_nodelay(true).expect("nodelay");
        let relay = tokio::spawn(async move {
            let t = Duration::from_secs(5);
            relay(&gw_node, &gw_client, 1_000_000, t, t).await.expect("pipe")
        });
        let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
        for round in 0..3 {
            node_end.write_all(&[7u8; 10_000]).await.expect("write");
            let t0 = std::time::Instant::now();
            while got < (round + 1) * 10_000 {
                match tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got += n,
                    other => panic!("round {round}: {got} bytes, then {other:?}"),
                }
            }
            assert!(t0.elapsed() < Duration::from_millis(100), "round {round}: held {:?}", t0.elapsed());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        relay.abort();
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_after_its_timeout() {
        let ((mut node_end, gw_node), (gw_client, _client)) = pairs().await;
        let writer = tokio::spawn(async move {
            let _ = node_end.write_all(&vec![1u8; 64 << 20]).await;
        });
        let r = relay(&gw_node, &gw_client, 64 << 20, Duration::from_secs(5), Duration::from_millis(300))
            .await
            .expect("pipe");
        match r {
            Err((n, "CD")) => assert!(n < 64 << 20, "cut before the end ({n})"),
            other => panic!("expected a client cut, got {other:?}"),
        }
        writer.abort();
    }
}
