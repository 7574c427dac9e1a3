//! Data plane: one side of a tunnel as a stream of its own type when hyper hands it back (plain
//! TCP), so that every read and write of a WebSocket skips hyper's `Upgraded` (a dynamic call and
//! two adapter layers each way); TLS streams stay behind `Upgraded`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::edge::proxy_protocol::Prefixed;

/// A tunnel's side: the connection's own stream (after the bytes hyper had read past the upgrade
/// exchange), or hyper's `Upgraded` when it is of another type.
pub enum Side<T> {
    /// The stream the connection was served on, behind what hyper had already read of it.
    Own(Prefixed<T>),
    /// Any other stream (TLS), through hyper.
    Hyper(TokioIo<Upgraded>),
}

impl<T> Side<T> {
    /// `up` as its own stream if it was served as a `TokioIo<S>` (`own` takes the stream out of
    /// the `S`), else as it is.
    pub fn of<S>(up: Upgraded, own: impl FnOnce(S) -> T) -> Side<T>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match up.downcast::<TokioIo<S>>() {
            // Frames the peer sent right behind the upgrade exchange, read by hyper: handed on first.
            Ok(parts) => Side::Own(Prefixed::new(own(parts.io.into_inner()), parts.read_buf.to_vec())),
            Err(up) => Side::Hyper(TokioIo::new(up)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Side<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Own(s) => Pin::new(s).poll_read(cx, buf),
            Side::Hyper(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Side<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Side::Own(s) => Pin::new(s).poll_write(cx, buf),
            Side::Hyper(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Side::Own(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Side::Hyper(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Side::Own(s) => s.is_write_vectored(),
            Side::Hyper(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Own(s) => Pin::new(s).poll_flush(cx),
            Side::Hyper(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Own(s) => Pin::new(s).poll_shutdown(cx),
            Side::Hyper(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
