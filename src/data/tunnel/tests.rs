//! Unit tests of the parent module.

use super::*;

fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
    let mut f = vec![0x81];
    let m = if masked { 0x80 } else { 0 };
    match payload_len {
        0..=125 => f.push(m | payload_len as u8),
        126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            f.push(m | 127);
            f.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&[1, 2, 3, 4]);
    }
    f.extend(std::iter::repeat_n(b'x', payload_len));
    f
}

#[test]
fn tracks_boundaries_across_splits() {
    let mut stream = Vec::new();
    for (len, masked) in [(5, false), (0, false), (300, true), (70_000, false), (1, true)] {
        stream.extend(frame(len, masked));
    }
    for chunk in [1, 3, 7, 1000, stream.len()] {
        let mut t = FrameTracker::default();
        for c in stream.chunks(chunk) {
            assert_eq!(t.advance(c, false), c.len());
        }
        assert!(t.at_boundary(), "chunk size {chunk}");
    }
}

#[test]
fn stops_at_first_boundary() {
    let mut stream = frame(10, false);
    let first = stream.len();
    stream.extend(frame(10, false));
    let mut t = FrameTracker::default();
    assert_eq!(t.advance(&stream[..4], false), 4);
    assert!(!t.at_boundary());
    assert_eq!(t.advance(&stream[4..], true), first - 4);
    assert!(t.at_boundary());
    assert_eq!(t.advance(&stream[first..], true), 0);
}

#[tokio::test]
async fn pump_holds_no_buffer_while_idle_and_keeps_only_what_a_slow_writer_left() {
    let (mut src, b) = tokio::io::duplex(1 << 20);
    let (mut r, _rw) = tokio::io::split(b);
    // The writer's pipe takes 1 KiB: a 200 KB burst waits for the reader at the other end.
    let (w, mut sink) = tokio::io::duplex(1024);
    let (_wr, mut w) = tokio::io::split(w);
    let mut pump = Pump::default();
    src.write_all(b"hello").await.expect("write");
    assert_eq!(pump.pump(&mut r, &mut w, |d| d.len()).await.expect("pump"), (5, 5));
    assert!(!pump.held(), "written at once: nothing kept");
    let mut got = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut sink, &mut got).await.expect("read");
    assert_eq!(&got, b"hello");
    // Nothing to read: a waiting pump holds nothing.
    assert!(tokio::time::timeout(Duration::from_millis(50), pump.pump(&mut r, &mut w, |d| d.len())).await.is_err());
    assert!(!pump.held(), "an idle pump holds no buffer");
    src.write_all(&vec![7u8; 200_000]).await.expect("write");
    let drain = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while all.len() < 200_000 {
            let n = tokio::io::AsyncReadExt::read(&mut sink, &mut buf).await.expect("read");
            assert!(n > 0, "pipe closed early");
            all.extend_from_slice(&buf[..n]);
        }
        (all, sink)
    });
    let mut moved = 0;
    while moved < 200_000 {
        let (n, sent) = pump.pump(&mut r, &mut w, |d| d.len()).await.expect("pump");
        assert_eq!(n, sent);
        moved += n;
    }
    assert!(!pump.held(), "freed once written");
    let (all, _sink) = drain.await.expect("drain");
    assert!(all.len() == 200_000 && all.iter().all(|&x| x == 7));
    // `keep` drops what follows: a closing tunnel stops at a frame boundary.
    src.write_all(b"abcdef").await.expect("write");
    assert_eq!(pump.pump(&mut r, &mut w, |_| 2).await.expect("pump"), (6, 2));
    drop(src);
    assert_eq!(pump.pump(&mut r, &mut w, |d| d.len()).await.expect("eof"), (0, 0));
}

/// The counters a test tunnel feeds (a real one feeds the frontend's and its node's; here both are
/// the same).
#[derive(Default)]
struct Meters {
    /// Client-to-node bytes, counted twice (frontend and node).
    inbound: AtomicU64,
    /// Node-to-client bytes, counted twice.
    outbound: AtomicU64,
    /// SDK heartbeats answered by the tunnel.
    pongs: AtomicU64,
}

impl Meters {
    fn io(&self) -> TunnelIo<'_> {
        TunnelIo {
            bytes_in: [&self.inbound, &self.inbound],
            bytes_out: [&self.outbound, &self.outbound],
            pings_answered: &self.pongs,
            session: None,
        }
    }
}

/// A tunnel's kill and shutdown signals.
fn tokens() -> (CancellationToken, CancellationToken) {
    (CancellationToken::new(), CancellationToken::new())
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_closes_after_the_timeout_and_traffic_defers_it() {
    let (client, mut client_peer) = tokio::io::duplex(4096);
    let (node, mut node_peer) = tokio::io::duplex(4096);
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let t0 = tokio::time::Instant::now();
    let traffic = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client_peer.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut node_peer, &mut got).await.expect("relayed");
        (client_peer, node_peer)
    };
    let (end, _peers) = tokio::join!(run(client, node, opts(false, 2), &kill, &shutdown, None, &io), traffic);
    assert_eq!(end, TunnelEnd::Idle);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(3500) && took < Duration::from_millis(3600), "closed after {took:?}");
    assert_eq!(m.inbound.load(Ordering::Relaxed), 8, "4 bytes counted on both counters");
}

#[tokio::test]
async fn a_killed_websocket_tunnel_says_going_away_between_frames() {
    let (client, mut client_peer) = tokio::io::duplex(4096);
    let (node, _node_peer) = tokio::io::duplex(4096);
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let k = kill.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        k.cancel();
    });
    let end = run(client, node, opts(true, 60), &kill, &shutdown, None, &io).await;
    assert_eq!(end, TunnelEnd::NodeGone);
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut client_peer, &mut got).await.expect("read");
    assert_eq!(got, close_frame(1001, "node going away"));
}

#[tokio::test]
async fn a_drawn_tunnel_says_1012_and_one_opened_after_the_rebalancing_began_stays() {
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let shed = Shed::new(&kill);
    let (old_c, mut old_peer) = tokio::io::duplex(4096);
    let (old_n, _old_node) = tokio::io::duplex(4096);
    let (new_c, mut new_peer) = tokio::io::duplex(4096);
    let (new_n, _new_node) = tokio::io::duplex(4096);
    let old = run(old_c, old_n, opts(true, 60), &kill, &shutdown, Some((&shed, 100)), &io);
    let new = run(new_c, new_n, opts(true, 60), &kill, &shutdown, Some((&shed, 5000)), &io);
    let steer = async {
        tokio::task::yield_now().await;
        // Two to close, but only one tunnel opened before 1000: the other survives the wave.
        shed.draw(2, 1000, &kill);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut old_peer, &mut got).await.expect("read");
        assert_eq!(got, close_frame(1012, "rebalancing: please reconnect"));
        assert_eq!(shed.budget(), 1, "the newer tunnel took no share");
        kill.cancel();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut new_peer, &mut got).await.expect("read");
        assert_eq!(got, close_frame(1001, "node going away"), "a kill still reaches a tunnel that waited again");
    };
    let (old_end, new_end, ()) = tokio::join!(old, new, steer);
    assert_eq!((old_end, new_end), (TunnelEnd::Rebalanced, TunnelEnd::NodeGone));
    assert_eq!(shed.closed(), 1);
}

#[test]
fn close_codes_are_read_from_masked_and_plain_frames() {
    // A client's close frame: masked, code 4001 and a reason, split across reads.
    let key = [9u8, 8, 7, 6];
    let payload = [&4001u16.to_be_bytes()[..], b"bye"].concat();
    let mut f = vec![0x88, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    let mut t = FrameTracker::default();
    for c in f.chunks(3) {
        t.advance(c, false);
    }
    assert_eq!(t.take_close(), Some(4001));
    assert_eq!(t.take_close(), None, "taken once");
    let mut t = FrameTracker::default();
    t.advance(&close_frame(1000, "done"), false);
    assert_eq!(t.take_close(), Some(1000));
    t.advance(&[0x88, 0], false);
    assert_eq!(t.take_close(), Some(1005), "a close frame without a code");
}

#[test]
fn close_frame_layout() {
    assert_eq!(close_frame(1001, ""), vec![0x88, 2, 0x03, 0xE9]);
    let mut t = FrameTracker::default();
    t.advance(&close_frame(1000, "bye"), false);
    assert!(t.saw_close && t.at_boundary());
}

fn opts(websocket: bool, idle_secs: u64) -> RunOpts {
    RunOpts { websocket, idle: Duration::from_secs(idle_secs), pings: None }
}

/// A client's masked text frame.
fn masked_text(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[test]
fn only_a_lone_whole_sdk_heartbeat_is_recognised() {
    assert!(is_sdk_ping(&masked_text(br#"{"p":1}"#, [0x12, 0x34, 0x56, 0x78])));
    assert!(is_sdk_ping(&masked_text(br#"{"p":1}"#, [0, 0, 0, 0])));
    let mut compressed = masked_text(br#"{"p":1}"#, [1, 2, 3, 4]);
    compressed[0] = 0xC1; // RSV1: permessage-deflate
    let mut fragment = masked_text(br#"{"p":1}"#, [1, 2, 3, 4]);
    fragment[0] = 0x01; // no FIN
    let mut two = masked_text(br#"{"p":1}"#, [1, 2, 3, 4]);
    two.extend(masked_text(br#"{"p":1}"#, [1, 2, 3, 4]));
    for (bad, why) in [
        (masked_text(br#"{"p":2}"#, [1, 2, 3, 4]), "an answer"),
        (masked_text(br#"{"p":1} "#, [1, 2, 3, 4]), "another payload"),
        (b"\x81\x07{\"p\":1}".to_vec(), "unmasked"),
        (compressed, "compressed"),
        (fragment, "a fragment"),
        (two, "two heartbeats in one read"),
    ] {
        assert!(!is_sdk_ping(&bad), "{why}");
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_answered_between_the_nodes_frames_and_one_per_period_goes_on() {
    use tokio::io::AsyncReadExt as _;
    let (client, mut client_peer) = tokio::io::duplex(4096);
    let (node, mut node_peer) = tokio::io::duplex(4096);
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let every = Duration::from_secs(10);
    let opts = RunOpts { websocket: true, idle: Duration::from_secs(600), pings: Some(every) };
    let ping = masked_text(br#"{"p":1}"#, [7, 7, 7, 7]);
    let steer = async {
        // Answered here: the client reads the answer, the node nothing but the next message.
        client_peer.write_all(&ping).await.expect("ping");
        let mut got = [0u8; 9];
        client_peer.read_exact(&mut got).await.expect("pong");
        assert_eq!(&got, SDK_PONG);
        let hello = masked_text(b"hello", [1, 2, 3, 4]);
        client_peer.write_all(&hello).await.expect("hello");
        let mut got = vec![0u8; hello.len()];
        node_peer.read_exact(&mut got).await.expect("hello relayed");
        assert_eq!(got, hello, "the heartbeat never reached the node");

        // Half a node frame is out: the answer waits for its end, then follows it.
        let frame = b"\x81\x0Anotify-123".to_vec();
        node_peer.write_all(&frame[..5]).await.expect("half");
        let mut got = [0u8; 5];
        client_peer.read_exact(&mut got).await.expect("half relayed");
        client_peer.write_all(&ping).await.expect("ping");
        tokio::task::yield_now().await;
        node_peer.write_all(&frame[5..]).await.expect("rest");
        let mut got = vec![0u8; frame.len() - 5 + SDK_PONG.len()];
        client_peer.read_exact(&mut got).await.expect("rest and pong");
        assert_eq!(got, [&frame[5..], SDK_PONG].concat(), "the answer never cuts the node's frame");

        // Once per period the heartbeat goes on to the node, which answers it itself.
        tokio::time::advance(every).await;
        client_peer.write_all(&ping).await.expect("ping");
        let mut got = vec![0u8; ping.len()];
        node_peer.read_exact(&mut got).await.expect("forwarded");
        assert_eq!(got, ping);
        node_peer.write_all(SDK_PONG).await.expect("node's pong");
        let mut got = [0u8; 9];
        client_peer.read_exact(&mut got).await.expect("node's pong relayed");
        assert_eq!(&got, SDK_PONG);
        // ...and the next one is answered here again.
        client_peer.write_all(&ping).await.expect("ping");
        client_peer.read_exact(&mut got).await.expect("pong");
        assert_eq!(&got, SDK_PONG);
        kill.cancel();
        (client_peer, node_peer)
    };
    let (end, _peers) = tokio::join!(run(client, node, opts, &kill, &shutdown, None, &io), steer);
    assert_eq!(end, TunnelEnd::NodeGone);
    assert_eq!(m.pongs.load(Ordering::Relaxed), 3, "three answered here, one by the node");
}

#[tokio::test]
async fn with_pings_forwarded_every_heartbeat_reaches_the_node() {
    use tokio::io::AsyncReadExt as _;
    let (client, mut client_peer) = tokio::io::duplex(4096);
    let (node, mut node_peer) = tokio::io::duplex(4096);
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let ping = masked_text(br#"{"p":1}"#, [7, 7, 7, 7]);
    let steer = async {
        for _ in 0..3 {
            client_peer.write_all(&ping).await.expect("ping");
            let mut got = vec![0u8; ping.len()];
            node_peer.read_exact(&mut got).await.expect("forwarded");
            assert_eq!(got, ping);
        }
        kill.cancel();
        (client_peer, node_peer)
    };
    let (end, _peers) = tokio::join!(run(client, node, opts(true, 60), &kill, &shutdown, None, &io), steer);
    assert_eq!(end, TunnelEnd::NodeGone);
}

#[tokio::test]
async fn a_close_waits_for_the_rest_of_a_frame_the_client_has_not_taken_yet() {
    use tokio::io::AsyncReadExt as _;
    // The client's side takes 64 bytes at a time: most of the node's frame is still unwritten
    // (though read whole, at a frame boundary) when the node goes away.
    let (client, mut client_peer) = tokio::io::duplex(64);
    let (node, mut node_peer) = tokio::io::duplex(4096);
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    let big = frame(300, false);
    let steer = async {
        node_peer.write_all(&big).await.expect("frame");
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill.cancel();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(
            got,
            [big.clone(), close_frame(1001, "node going away")].concat(),
            "the close frame after the whole frame"
        );
        node_peer
    };
    let (end, _node) = tokio::join!(run(client, node, opts(true, 60), &kill, &shutdown, None, &io), steer);
    assert_eq!(end, TunnelEnd::NodeGone);
}

/// Every open WebSocket holds one tunnel's future for its whole life: its size is memory per
/// connection (ws-idle, ws-ping in bench/perf.sh). It was 1,656 bytes with plain sockets before
/// the streams were split ahead of the future and `Pump::pump` stopped being an `async fn`
/// (their references and streams were stored twice), 1,472 after; this fails if it grows back.
#[tokio::test]
async fn a_tunnels_future_stays_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let (a, (b, _)) = (a.expect("connect"), b.expect("accept"));
    let m = Meters::default();
    let io = m.io();
    let (kill, shutdown) = tokens();
    // The plain sockets' types, as the lane's tunnels have them.
    let client = crate::data::edge::proxy_protocol::Prefixed::new(a, Vec::new());
    let node = crate::data::edge::proxy_protocol::Prefixed::new(b, Vec::new());
    let fut = run(client, node, opts(true, 60), &kill, &shutdown, None, &io);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 1536, "a tunnel's future is {size} bytes (1,472 when this test was written, 1,656 before)");
}
