//! io_uring probe: io_uring_setup, a NOP, a read on a socketpair and a recv on loopback TCP (is io_uring allowed here?).
use io_uring::{opcode, types, IoUring};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::net::{TcpListener, TcpStream};

fn main() {
    let mut ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("io_uring_setup FAILED: {:?} (raw os error {:?})", e, e.raw_os_error());
            std::process::exit(1);
        }
    };
    println!("io_uring_setup OK; params features = {:#x}", ring.params().is_feature_nodrop() as u32);
    println!("feature single_mmap={} nodrop={} fast_poll={} ext_arg={}",
        ring.params().is_feature_single_mmap(), ring.params().is_feature_nodrop(),
        ring.params().is_feature_fast_poll(), ring.params().is_feature_ext_arg());

    // NOP
    let nop = opcode::Nop::new().build().user_data(0x42);
    unsafe { ring.submission().push(&nop).unwrap(); }
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("cqe");
    println!("NOP: user_data={:#x} result={}", cqe.user_data(), cqe.result());

    // Read on a unix socketpair
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(b"hello-uring").unwrap();
    let mut buf = vec![0u8; 64];
    let rd = opcode::Read::new(types::Fd(b.as_raw_fd()), buf.as_mut_ptr(), buf.len() as _)
        .build().user_data(0x43);
    unsafe { ring.submission().push(&rd).unwrap(); }
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("cqe");
    let n = cqe.result();
    println!("READ(unix socket): user_data={:#x} result={} data={:?}", cqe.user_data(), n,
        if n > 0 { String::from_utf8_lossy(&buf[..n as usize]).to_string() } else { String::new() });

    // Recv on a TCP socket (loopback), submitted BEFORE data arrives (tests async completion)
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let (s, _) = l.accept().unwrap();
    let mut buf2 = vec![0u8; 64];
    let rv = opcode::Recv::new(types::Fd(s.as_raw_fd()), buf2.as_mut_ptr(), buf2.len() as _)
        .build().user_data(0x44);
    unsafe { ring.submission().push(&rv).unwrap(); }
    ring.submit().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.write_all(b"tcp-hello").unwrap();
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("cqe");
    let n = cqe.result();
    println!("RECV(tcp socket, pending then completed): user_data={:#x} result={} data={:?}", cqe.user_data(), n,
        if n > 0 { String::from_utf8_lossy(&buf2[..n as usize]).to_string() } else { String::new() });
}
