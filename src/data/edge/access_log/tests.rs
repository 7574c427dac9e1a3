//! Unit tests of the parent module.

use super::*;

#[test]
fn masked_query_values_and_escapes() {
    let mask = vec!["jwt".to_string(), "access_token".to_string()];
    let mut s = String::new();
    let uri: Uri = "/_now?jwt=abc.def&x=1&access_token=zz&jwtx=2".parse().expect("uri");
    path(&mut s, &uri, &mask, true);
    assert_eq!(s, "/_now?jwt=***&x=1&access_token=***&jwtx=2");
    let mut s = String::new();
    json_escape(&mut s, "a\"b\\c\u{1}");
    assert_eq!(s, "a\\\"b\\\\c\\u0001");
}

#[test]
fn numbers_and_addresses_without_fmt() {
    let mut s = String::new();
    for n in [0, 7, 10, 65_535, u64::MAX] {
        num(&mut s, n);
        s.push(' ');
    }
    addr(&mut s, "203.0.113.7:40001".parse().expect("v4"));
    s.push(' ');
    addr(&mut s, "[2001:db8::7]:5".parse().expect("v6"));
    assert_eq!(s, "0 7 10 65535 18446744073709551615 203.0.113.7:40001 [2001:db8::7]:5");
}

#[test]
fn times_and_durations() {
    // An anchor at a known wall-clock time: an instant 123 ms later reads 123 ms later.
    let now = Instant::now();
    let wall = Duration::from_millis(1_764_633_600_000);
    let mut clock = Clock { anchor: Some((now, wall)), second: u64::MAX, text: String::new() };
    let mut s = String::new();
    time_json(&mut s, &mut clock, now + Duration::from_millis(123));
    assert_eq!(s, "\"2025-12-02T00:00:00.123Z\"");
    let mut s = String::new();
    time_text(&mut s, &mut clock, now + Duration::from_millis(200));
    assert_eq!(s, "2025-12-02T00:00:00.200Z");
    // An anchor a second old is renewed from the clocks.
    let mut old = Clock { anchor: Some((now - Duration::from_secs(5), wall)), second: u64::MAX, text: String::new() };
    let w = UNIX_EPOCH + old.since_epoch(Instant::now());
    let off = w.duration_since(SystemTime::now()).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(1), "the anchor was renewed from the clocks: {w:?}");
    let mut s = String::new();
    ms(&mut s, Some(Duration::from_micros(1234)));
    ms_text(&mut s, None);
    assert_eq!(s, "1.234-");
    // A request that began before the anchor was read: read back from it.
    let mut s = String::new();
    time_text(&mut s, &mut clock, now - Duration::from_millis(5));
    assert_eq!(s, "2025-12-01T23:59:59.995Z");
    let mut s = String::new();
    ms(&mut s, Some(Duration::new(3, 999_999_999)));
    assert_eq!(s, "3999.999", "microseconds, truncated");
}

/// The fast lane's target is written as sent (its bytes need no escaping), masks applied; hyper's
/// path's is escaped; a client label made once reads as the address does.
#[test]
fn lane_targets_masks_and_labels() {
    let mask = vec!["jwt".to_string()];
    let mut s = String::new();
    target(&mut s, &Target::Plain("/_now?jwt=abc&x=1".into()), &mask, true);
    s.push(' ');
    target(&mut s, &Target::Plain("/a/b".into()), &mask, true);
    s.push(' ');
    target(&mut s, &Target::Uri(Uri::from_static("/q?jwt=1")), &mask, true);
    assert_eq!(s, "/_now?jwt=***&x=1 /a/b /q?jwt=***");
    assert_eq!(Target::Plain("/p?q=1".into()).into_uri(), Uri::from_static("/p?q=1"));
    assert_eq!(&*label("203.0.113.7:40001".parse().expect("v4")), "203.0.113.7:40001");
    assert_eq!(&*label("[2001:db8::7]:5".parse().expect("v6")), "[2001:db8::7]:5");
    let mut s = String::new();
    json_escape(&mut s, "cluster_kuzzle_1 with a longer name than sixteen bytes");
    json_escape(&mut s, "\u{1f}");
    assert_eq!(s, "cluster_kuzzle_1 with a longer name than sixteen bytes\\u001f");
}

/// A record of a request to `/x` for a log at `path`.
fn record(log: &Arc<AccessLog>, path: &std::path::Path) -> HttpRecord {
    let text = format!("[access_log]\npath = {:?}\n", path.display().to_string());
    let config = Arc::new(Config::parse(&text, "t.toml").expect("config"));
    let client = ("127.0.0.1:9".parse().expect("addr"), None);
    let mut r = HttpRecord::new(config, log.clone(), client, Method::GET, Target::Uri(Uri::from_static("/x")));
    r.status = 200;
    r
}

/// A worker (a current-thread runtime) buffers its lines: none is written until its flusher
/// hands them over (within a second), and the last ones go at the end.
#[tokio::test]
async fn a_worker_buffers_its_lines_and_its_flusher_hands_them_over() {
    let dir = std::env::temp_dir().join(format!("kgw-access-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("a.log");
    let life = Lifecycle::default();
    let log = Arc::new(AccessLog::new(life.clone(), Arc::default()));
    let r = record(&log, &path);
    log.http(&r, 1);
    log.http(&r, 2);
    tokio::task::yield_now().await;
    assert!(!path.exists(), "nothing handed over per request: the writer has not even started");
    let t0 = Instant::now();
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(text.lines().count(), 2, "handed over by the flusher: {text:?}");
    assert!(t0.elapsed() < FLUSH_EVERY * 2, "after {:?}", t0.elapsed());
    log.http(&r, 3);
    log.finish().await;
    let text = std::fs::read_to_string(&path).expect("file");
    assert_eq!(text.lines().count(), 3, "the last line at the end: {text}");
    assert!(text.lines().last().is_some_and(|l| l.contains("\"bytes_out\":3")), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_first_close_wins() {
    let f = FirstClose::default();
    f.set(FirstClose::NODE, None);
    f.set(FirstClose::CLIENT, Some(1000));
    f.set(FirstClose::NODE, Some(1001));
    assert_eq!(f.get(), ("node", Some(1001)), "the node's end of stream, then its close frame");
    assert_eq!(FirstClose::default().get(), ("error", None));
}
