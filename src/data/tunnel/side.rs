//! Data plane: one side of a tunnel as a stream of its own type when hyper hands it back (plain
//! TCP), so that every read and write of a WebSocket skips hyper's `Upgraded` (a dynamic call and
//! two adapter layers each way); TLS streams stay behind `Upgraded`.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;

use crate::data::edge::proxy_protocol::Prefixed;

/// A tunnel's side: the stream the connection was served on, behind what hyper had already read
/// of it (left), or hyper's `Upgraded` when it is of another type (right: TLS).
pub type Side<T> = Either<Prefixed<T>, TokioIo<Upgraded>>;

/// `up` as its own stream if it was served as a `TokioIo<S>` (`own` takes the stream out of the
/// `S`), else as it is.
pub fn side<S, T>(up: Upgraded, own: impl FnOnce(S) -> T) -> Side<T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match up.downcast::<TokioIo<S>>() {
        // Frames the peer sent right behind the upgrade exchange, read by hyper: handed on first.
        Ok(parts) => Either::Left(Prefixed::new(own(parts.io.into_inner()), parts.read_buf.to_vec())),
        Err(up) => Either::Right(TokioIo::new(up)),
    }
}
