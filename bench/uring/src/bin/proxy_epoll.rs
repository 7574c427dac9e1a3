//! (a) tokio current_thread (epoll). Dumb relay: one read from client -> write upstream -> one read from upstream -> write client.
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUF: usize = 16 * 1024;

async fn handle(mut c: TcpStream, up: SocketAddr) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let mut u = TcpStream::connect(up).await?;
    u.set_nodelay(true)?;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = c.read(&mut buf).await?;
        if n == 0 { return Ok(()); }
        u.write_all(&buf[..n]).await?;
        let m = u.read(&mut buf).await?;
        if m == 0 { return Ok(()); }
        c.write_all(&buf[..m]).await?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let up: SocketAddr = args[2].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    rt.block_on(async move {
        let l = TcpListener::bind(listen).await.unwrap();
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move { let _ = handle(c, up).await; });
        }
    });
}
