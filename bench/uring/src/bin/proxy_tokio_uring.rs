//! (b1) tokio-uring 0.5 (completion-based ops; the ring fd is itself driven by tokio's current_thread epoll reactor).
use std::net::SocketAddr;
use tokio_uring::net::{TcpListener, TcpStream};
use tokio_uring::buf::BoundedBuf;

const BUF: usize = 16 * 1024;

async fn handle(c: TcpStream, up: SocketAddr) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let u = TcpStream::connect(up).await?;
    u.set_nodelay(true)?;
    let mut buf = vec![0u8; BUF];
    loop {
        let (r, b) = c.read(buf).await;
        let n = r?;
        if n == 0 { return Ok(()); }
        let (r, s) = u.write_all(b.slice(..n)).await;
        r?;
        let (r, b) = u.read(s.into_inner()).await;
        let m = r?;
        if m == 0 { return Ok(()); }
        let (r, s) = c.write_all(b.slice(..m)).await;
        r?;
        buf = s.into_inner();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let up: SocketAddr = args[2].parse().unwrap();
    tokio_uring::start(async move {
        let l = TcpListener::bind(listen).unwrap();
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio_uring::spawn(async move { let _ = handle(c, up).await; });
        }
    });
}
