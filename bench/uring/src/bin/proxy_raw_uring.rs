//! (b2) hand-written io_uring event loop, io-uring 0.7: one ring, all connections in flight,
//! completion-based Accept/Recv/Send; exactly one io_uring_enter(submit+wait) per loop iteration.
use io_uring::{opcode, types, IoUring};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, IntoRawFd, RawFd};

const BUF: usize = 16 * 1024;
const OP_ACCEPT: u64 = 0;
const OP_RECV_C: u64 = 1;
const OP_SEND_U: u64 = 2;
const OP_RECV_U: u64 = 3;
const OP_SEND_C: u64 = 4;

struct Conn { c: RawFd, u: RawFd, buf: Vec<u8>, len: usize, off: usize }

fn ud(idx: usize, op: u64) -> u64 { ((idx as u64) << 3) | op }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let up: SocketAddr = args[2].parse().unwrap();
    let l = TcpListener::bind(listen).unwrap();
    let lfd = l.as_raw_fd();
    // URING_DEFER=1 -> IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN (kernel >= 6.1)
    let mut ring: IoUring = if std::env::var("URING_DEFER").as_deref() == Ok("1") {
        IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_coop_taskrun().build(1024).expect("io_uring_setup(defer)")
    } else { IoUring::new(1024).expect("io_uring_setup") };
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::with_capacity(256);

    pending.push(opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
        .build().user_data(ud(0, OP_ACCEPT)));

    loop {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) { unsafe { sq.push(&e).expect("sq full"); } }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {} // SQEs stay queued in the ring; CQEs drained below
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        let cqes: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (u, res) in cqes {
            let op = u & 7;
            let idx = (u >> 3) as usize;
            if op == OP_ACCEPT {
                pending.push(opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                    .build().user_data(ud(0, OP_ACCEPT)));
                if res < 0 { continue; }
                let cfd = res;
                let us = match TcpStream::connect(up) { Ok(s) => s, Err(_) => { unsafe { libc::close(cfd); } continue; } };
                us.set_nodelay(true).unwrap();
                let one: libc::c_int = 1;
                unsafe { libc::setsockopt(cfd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, 4); }
                let conn = Conn { c: cfd, u: us.into_raw_fd(), buf: vec![0u8; BUF], len: 0, off: 0 };
                let i = match free.pop() { Some(i) => { conns[i] = Some(conn); i } None => { conns.push(Some(conn)); conns.len() - 1 } };
                let cn = conns[i].as_mut().unwrap();
                pending.push(opcode::Recv::new(types::Fd(cn.c), cn.buf.as_mut_ptr(), BUF as u32).build().user_data(ud(i, OP_RECV_C)));
                continue;
            }
            let cn = conns[idx].as_mut().unwrap();
            if res <= 0 {
                unsafe { libc::close(cn.c); libc::close(cn.u); }
                conns[idx] = None;
                free.push(idx);
                continue;
            }
            let n = res as usize;
            match op {
                OP_RECV_C | OP_RECV_U => {
                    cn.len = n; cn.off = 0;
                    let (fd, nop) = if op == OP_RECV_C { (cn.u, OP_SEND_U) } else { (cn.c, OP_SEND_C) };
                    pending.push(opcode::Send::new(types::Fd(fd), cn.buf.as_ptr(), n as u32).build().user_data(ud(idx, nop)));
                }
                OP_SEND_U | OP_SEND_C => {
                    cn.off += n;
                    let fd = if op == OP_SEND_U { cn.u } else { cn.c };
                    if cn.off < cn.len {
                        pending.push(opcode::Send::new(types::Fd(fd), unsafe { cn.buf.as_ptr().add(cn.off) }, (cn.len - cn.off) as u32)
                            .build().user_data(ud(idx, op)));
                    } else {
                        let (rfd, rop) = if op == OP_SEND_U { (cn.u, OP_RECV_U) } else { (cn.c, OP_RECV_C) };
                        pending.push(opcode::Recv::new(types::Fd(rfd), cn.buf.as_mut_ptr(), BUF as u32).build().user_data(ud(idx, rop)));
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}
