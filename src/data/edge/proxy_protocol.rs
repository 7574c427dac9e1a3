//! Data plane: the PROXY protocol (v1 and v2) header an L4 balancer puts before a client's first
//! byte: read before anything else (before a TLS handshake), only from the balancers' networks;
//! the address it carries becomes the client's.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use proxy_header::{ParseConfig, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest header read: a v1 header is at most 107 bytes; a v2 one is 16 bytes plus its
/// addresses and TLVs (AWS, GCP and Azure add an endpoint id of a few dozen bytes). Bigger is
/// refused: a header is no place to make the gateway hold memory.
pub const MAX_HEADER: usize = 1024;

/// The v2 signature (RFC-less, from haproxy's proxy-protocol.txt).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection was closed before any HTTP (an index of
/// [`crate::core::counters::PROXY_REFUSALS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in `proxy_protocol_from`.
    NotAllowed = 0,
    /// Not a PROXY header (plain HTTP, garbage, a bad address).
    Malformed = 1,
    /// The peer closed before the header was whole.
    Truncated = 2,
    /// The header did not come within the time allowed.
    Timeout = 3,
    /// The header is longer than [`MAX_HEADER`].
    TooBig = 4,
}

/// Is `peer` one of the balancers (`proxy_protocol_from`)? An IPv4 peer on a dual-stack listener
/// shows as `::ffff:a.b.c.d`: it is compared as the IPv4 address it is.
pub fn allowed(peer: IpAddr, from: &[ipnet::IpNet]) -> bool {
    let ip = peer.to_canonical();
    from.iter().any(|n| n.contains(&ip))
}

/// Read one PROXY header from `io` within `limit`. Returns the client's address (the socket's
/// own `peer` for a v2 LOCAL command, the balancer's health check, or a v1 `UNKNOWN`) and the
/// bytes read past the header, which belong to the client's stream.
pub async fn read_header<I: AsyncRead + Unpin>(
    io: &mut I,
    peer: SocketAddr,
    limit: Duration,
) -> Result<(SocketAddr, Vec<u8>), Refusal> {
    match tokio::time::timeout(limit, read_inner(io, peer)).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::Timeout),
    }
}

async fn read_inner<I: AsyncRead + Unpin>(io: &mut I, peer: SocketAddr) -> Result<(SocketAddr, Vec<u8>), Refusal> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut have = 0;
    // Bounded: every pass reads at least one byte into a buffer of MAX_HEADER bytes.
    for _ in 0..=MAX_HEADER {
        if let Some(r) = parse(&buf[..have], peer)? {
            return Ok(r);
        }
        if have == buf.len() {
            return Err(Refusal::TooBig);
        }
        match io.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return Err(Refusal::Truncated),
            Ok(n) => have += n,
        }
    }
    Err(Refusal::TooBig)
}

/// A whole header at the start of `buf`: the client and the bytes after it; None: more needed.
fn parse(buf: &[u8], peer: SocketAddr) -> Result<Option<(SocketAddr, Vec<u8>)>, Refusal> {
    // A v2 header says its length up front: refuse a long one before reading it.
    if buf.len() >= 16 && buf.starts_with(V2_SIGNATURE) {
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_HEADER {
            return Err(Refusal::TooBig);
        }
    }
    let config = ParseConfig { include_tlvs: false, allow_v1: true, allow_v2: true };
    match ProxyHeader::parse(buf, config) {
        Ok((h, used)) => {
            let client = h.proxied_address().map_or(peer, |a| a.source);
            Ok(Some((client, buf[used..].to_vec())))
        }
        Err(proxy_header::Error::BufferTooShort) => {
            // Every byte so far must be one a header can start with, or the wait is for nothing.
            let sig: &[u8] = if buf.first() == Some(&b'P') { b"PROXY " } else { V2_SIGNATURE };
            let n = buf.len().min(sig.len());
            if buf[..n] != sig[..n] {
                return Err(Refusal::Malformed);
            }
            Ok(None)
        }
        Err(_) => Err(Refusal::Malformed),
    }
}

pin_project_lite::pin_project! {
    /// A stream some of whose first bytes were already read elsewhere: those bytes are read
    /// again first, then the stream itself. A client's, behind its PROXY header; a tunnel's side,
    /// behind what hyper read past the upgrade exchange. Empty (no allocation) when there are none.
    pub struct Prefixed<I> {
        // The stream, read once `rest` is handed on.
        #[pin]
        inner: I,
        // Bytes already read past the PROXY header or the upgrade exchange, handed on first
        // (freed once they are).
        rest: Vec<u8>,
        // How much of `rest` is handed on already.
        pos: usize,
    }
}

impl<I> Prefixed<I> {
    pub fn new(inner: I, rest: Vec<u8>) -> Self {
        // An empty buffer's capacity is not kept: a tunnel's side lasts as long as its WebSocket.
        let rest = if rest.is_empty() { Vec::new() } else { rest };
        Prefixed { inner, rest, pos: 0 }
    }

    /// Bytes of the client already read and not yet handed on.
    pub fn pending(&self) -> &[u8] {
        &self.rest[self.pos..]
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The stream and the bytes not yet handed on.
    pub fn into_parts(mut self) -> (I, Vec<u8>) {
        let rest = if self.pos == 0 { self.rest } else { self.rest.split_off(self.pos) };
        (self.inner, rest)
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.pos < this.rest.len() {
            let n = (this.rest.len() - *this.pos).min(out.remaining());
            out.put_slice(&this.rest[*this.pos..*this.pos + n]);
            *this.pos += n;
            if *this.pos == this.rest.len() {
                *this.rest = Vec::new();
                *this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn peer() -> SocketAddr {
        "10.0.0.9:4000".parse().expect("addr")
    }

    async fn read_all(bytes: &[u8]) -> Result<(SocketAddr, Vec<u8>), Refusal> {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(bytes).await.expect("write");
        drop(a);
        read_header(&mut b, peer(), Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_and_keep_what_follows() {
        let (c, rest) = read_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 7512\r\nGET / HTTP/1.1\r\n").await.expect("v1");
        assert_eq!(c, "192.0.2.7:5555".parse().expect("addr"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (c, rest) = read_all(b"PROXY TCP6 2001:db8::1 ::1 6000 7512\r\n").await.expect("v1 tcp6");
        assert_eq!((c, rest.len()), ("[2001:db8::1]:6000".parse().expect("addr"), 0));
        let (c, _) = read_all(b"PROXY UNKNOWN\r\n").await.expect("unknown");
        assert_eq!(c, peer(), "UNKNOWN: the socket's address");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 4, 10, 0, 0, 1, 0x1f, 0x90, 0x1d, 0x58, b'x']);
        let (c, rest) = read_all(&v2).await.expect("v2");
        assert_eq!((c, rest), ("198.51.100.4:8080".parse().expect("addr"), b"x".to_vec()));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read_all(&local).await.expect("local").0, peer(), "LOCAL: the balancer's own check");
    }

    #[tokio::test]
    async fn bad_short_slow_and_long_headers_are_refused() {
        assert_eq!(read_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await, Err(Refusal::Malformed));
        assert_eq!(read_all(b"PROXY TCP4 1.2.3.400 10.0.0.1 1 2\r\n").await, Err(Refusal::Malformed));
        assert_eq!(read_all(b"PROXY TCP4 192.0.2.7").await, Err(Refusal::Truncated));
        assert_eq!(read_all(b"PRAXY").await, Err(Refusal::Malformed), "no waiting on a header that cannot be");
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
        assert_eq!(read_all(&long).await, Err(Refusal::TooBig));
        assert_eq!(read_all(&[b'P'; 200]).await, Err(Refusal::Malformed));
        let (_a, mut b) = tokio::io::duplex(64);
        let r = read_header(&mut b, peer(), Duration::from_millis(50)).await;
        assert_eq!(r, Err(Refusal::Timeout));
    }

    #[test]
    fn allowed_networks_match_mapped_addresses() {
        let from: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert!(allowed("10.1.2.3".parse().expect("ip"), &from));
        assert!(allowed("::ffff:10.1.2.3".parse().expect("ip"), &from));
        assert!(!allowed("192.168.1.1".parse().expect("ip"), &from));
    }

    #[tokio::test]
    async fn prefixed_reads_the_rest_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.expect("write");
        drop(a);
        let mut p = Prefixed::new(b, b"hello".to_vec());
        let mut out = String::new();
        p.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[test]
    fn an_empty_rest_holds_no_buffer() {
        // The lane hands its read buffer over as it is: a WebSocket must not keep its capacity.
        let p = Prefixed::new((), Vec::with_capacity(4096));
        assert_eq!(p.rest.capacity(), 0);
        assert_eq!(Prefixed::new((), b"x".to_vec()).pending(), b"x");
    }
}
