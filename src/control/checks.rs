//! Control plane: the health-check I/O: one checker task per node (HTTP probe, passive failures,
//! scheduling) and what a transition does (close tunnels, drop pooled connections).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{Either, Full};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tokio::sync::watch;

use crate::control::config::{Config, OnMarkedDown};
use crate::core::backend::{Backend, ConnectError, Origin};
use crate::core::health::{CheckKind, CheckResult, HealthState};
use crate::core::machine::{Timing, Transition};
use crate::core::Lifecycle;
use crate::util::epoch_secs as now_epoch;

/// A re-check triggered by passive failures waits at least this long after the previous check
/// started, so a stream of failing requests cannot turn into a stream of checks.
pub const MIN_RECHECK_GAP: Duration = Duration::from_millis(50);

/// Starts one checker per node. Settings come from the settings watch, read before every round so
/// reloads apply; checkers stop when their node leaves for good (`b.tasks`) or at shutdown.
#[derive(Clone)]
pub struct Checkers {
    /// The configuration in force: `[health]` is read from it before every round.
    pub settings: watch::Receiver<Arc<Config>>,
    /// Where checkers run (the background tracker) and the shutdown that stops them.
    pub life: Lifecycle,
}

impl Checkers {
    /// Start `b`'s checker on the background tracker.
    pub fn spawn(&self, b: &Arc<Backend>) {
        // No runtime (pure unit tests of the registry): nothing to run the checker on. A host name
        // without an address has nothing to check: it stays DOWN until it resolves (a new backend).
        if tokio::runtime::Handle::try_current().is_err() || b.unresolved {
            return;
        }
        let settings = self.settings.clone();
        let b = b.clone();
        let stop = CancellationToken::new();
        let (s1, s2, s3) = (stop.clone(), self.life.shutdown.clone(), b.tasks.clone());
        self.life.background.spawn(async move {
            // Either token ends the checker.
            let watch = async move {
                tokio::select! {
                    _ = s2.cancelled() => {}
                    _ = s3.cancelled() => {}
                }
                s1.cancel();
            };
            let health = || settings.borrow().health.clone();
            let timing = || Timing::from_config(&health());
            let probe = || {
                let h = health();
                let b = b.clone();
                async move {
                    let path = if b.origin == Origin::Kuzzle2 { &h.kuzzle2_path } else { &h.path };
                    http_check(&b, path, h.timeout.0).await
                }
            };
            let on_change = |t: Transition, why: &str| on_transition(health().on_marked_down, &b, t, why);
            let passive_on = || health().passive;
            tokio::join!(watch, run(&b.health, timing, probe, passive_on, stop.clone(), on_change));
        });
    }
}

/// What a transition does outside the state machine.
fn on_transition(on_marked_down: OnMarkedDown, b: &Backend, t: Transition, why: &str) {
    match t {
        Transition::None => {}
        Transition::Up => tracing::info!(node = %b.name, addr = %b.addr, why, "node is UP"),
        Transition::Down => {
            // A node shutting down closes its WebSockets itself once their pending requests are
            // answered: closing them here would cut those answers.
            let keep = on_marked_down == OnMarkedDown::Keep || b.health.leaving();
            tracing::warn!(node = %b.name, addr = %b.addr, why, close_tunnels = !keep, "node is DOWN");
            // Pooled connections to a node that stopped answering are likely dead too.
            b.clear_pool();
            if !keep {
                b.kill_tunnels();
            }
        }
    }
}

/// The checker loop of one node: check at once, then after each result wait the delay the state
/// machine asks for; passive failures are applied as they come and bring the next check forward.
/// Generic over the probe and settings so tests can drive it with paused time.
pub async fn run<S, P, F, A, C>(
    state: &HealthState,
    settings: S,
    mut probe: P,
    passive_on: A,
    stop: CancellationToken,
    mut on_change: C,
) where
    S: Fn() -> Timing,
    P: FnMut() -> F,
    F: Future<Output = Option<CheckResult>>,
    A: Fn() -> bool,
    C: FnMut(Transition, &str),
{
    let apply_passive = |on_change: &mut C| -> bool {
        let leaving = state.apply_leaving();
        on_change(leaving, "the node is shutting down (503 api.process.shutting_down)");
        let n = state.take_passive();
        if n == 0 || !passive_on() {
            return leaving != Transition::None;
        }
        let t = state.apply(|m, now, epoch| m.record_passive(n, now, epoch));
        on_change(t, "failures on client traffic");
        true
    };
    loop {
        let timing = settings();
        state.apply(|m, _, _| {
            m.set_limits(timing.rise, timing.fall);
            Transition::None
        });
        let started = Instant::now();
        let check = probe();
        tokio::pin!(check);
        let result = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = &mut check => break r,
                _ = state.kicked() => { apply_passive(&mut on_change); }
            }
        };
        match result {
            Some(result) => {
                let t = state.apply(|m, now, epoch| m.record(result, now, epoch));
                on_change(t, result.kind.as_str());
            }
            // The gateway could not run the check (no fd left...): nothing is learnt about the node.
            None => tracing::warn!("health check not run: the gateway is out of local resources (open files?)"),
        }

        let delay = state.apply_read(|m| m.next_delay(&timing, rand::random::<f64>()));
        let mut deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = state.kicked() => {
                    if apply_passive(&mut on_change) {
                        deadline = deadline.min((started + MIN_RECHECK_GAP).max(Instant::now()));
                    }
                }
            }
        }
    }
}

/// One active check: `GET path` on a fresh connection, the whole exchange within `timeout`. None
/// when the gateway itself could not open a connection (EMFILE...): that is no verdict on the node.
pub async fn http_check(b: &Backend, path: &str, timeout: Duration) -> Option<CheckResult> {
    let start = Instant::now();
    let deadline = start + timeout;
    let done = |kind: CheckKind, code: Option<u16>| {
        Some(CheckResult { kind, code, duration: start.elapsed(), at: now_epoch() })
    };
    let mut sender = match b.connect(timeout, crate::control::config::LimitsSection::default().response_head).await {
        Ok(s) => s,
        Err(ConnectError::Local(_)) => return None,
        Err(ConnectError::Timeout) => return done(CheckKind::L4TOUT, None),
        Err(_) => return done(CheckKind::L4CON, None),
    };
    let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
    *req.method_mut() = Method::GET;
    match path.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        // The configuration validates the path; a bad one fails the check rather than panicking.
        Err(_) => return done(CheckKind::L7RSP, None),
    }
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&b.addr.to_string()) {
        h.insert(header::HOST, v);
    }
    h.insert(header::USER_AGENT, HeaderValue::from_static("kuzzle-gateway-health"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let exchange = async {
        sender.ready().await?;
        sender.send_request(req).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => done(CheckKind::L7TOUT, None),
        Ok(Err(_)) => done(CheckKind::L7RSP, None),
        Ok(Ok(resp)) => {
            let code = resp.status().as_u16();
            let kind = if (200..400).contains(&code) { CheckKind::L7OK } else { CheckKind::L7STS };
            done(kind, Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait (bounded: 10 000 steps of 1 ms, paused or real time) until `f` holds.
    async fn wait_until(f: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("condition not reached within 10 000 steps");
    }
    use std::sync::Mutex;

    fn res(ok: bool) -> Option<CheckResult> {
        let kind = if ok { CheckKind::L7OK } else { CheckKind::L7STS };
        Some(CheckResult { kind, code: None, duration: Duration::ZERO, at: 0 })
    }

    fn timing(jitter_pct: u32) -> Timing {
        Timing { jitter_pct, ..crate::core::machine::tests::timing() }
    }

    /// Run the loop over a scripted probe; return the instants (relative to start) of each check
    /// and the transitions.
    async fn drive(up: bool, script: Vec<bool>, jitter: u32) -> (Vec<Duration>, Vec<Transition>) {
        let state = HealthState::new(up);
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let times = Mutex::new(Vec::new());
        let mut script = script.into_iter();
        let mut transitions = Vec::new();
        let probe = || {
            times.lock().expect("times").push(t0.elapsed());
            let r = match script.next() {
                Some(ok) => res(ok),
                None => {
                    stop.cancel();
                    res(true)
                }
            };
            async move { r }
        };
        let limit = tokio::time::timeout(
            Duration::from_secs(3600),
            run(&state, || timing(jitter), probe, || true, stop.clone(), |t, _| transitions.push(t)),
        );
        assert!(limit.await.is_ok(), "checker loop did not stop");
        let mut times = times.into_inner().expect("times");
        times.pop(); // the call that found the script empty
        (times, transitions.into_iter().filter(|t| *t != Transition::None).collect())
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_follow_state() {
        // UP: interval; failing: fastinter; DOWN: downinter; rising: fastinter; UP again: interval.
        let (times, tr) = drive(true, vec![true, false, false, false, false, true, true, true], 0).await;
        assert_eq!(times, secs(&[0, 10, 11, 12, 42, 72, 73, 83]));
        assert_eq!(tr, vec![Transition::Down, Transition::Up]);
    }

    #[tokio::test(start_paused = true)]
    async fn joining_node_checked_at_once_and_fast() {
        let (times, tr) = drive(false, vec![false, true, true], 0).await;
        assert_eq!(times, secs(&[0, 1, 11]), "joining: fastinter until its first success, then interval");
        assert_eq!(tr, vec![Transition::Up]);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_checks() {
        let (times, _) = drive(true, vec![true; 30], 10).await;
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 29);
        assert!(gaps.iter().all(|g| *g >= Duration::from_secs(9) && *g <= Duration::from_secs(11)), "{gaps:?}");
        let distinct: std::collections::HashSet<_> = gaps.iter().collect();
        assert!(distinct.len() > 10, "jitter should vary the gaps: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn passive_failures_mark_down_before_next_check() {
        let state = Arc::new(HealthState::new(true));
        let stop = CancellationToken::new();
        let checks = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let (s2, c2, st2) = (state.clone(), checks.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let probe = || {
                let n = {
                    let mut c = c2.lock().expect("checks");
                    c.push(t0.elapsed());
                    c.len()
                };
                // Healthy for the first check, then the node is gone.
                async move { res(n == 1) }
            };
            run(&s2, || timing(0), probe, || true, st2, |_, _| {}).await;
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(state.is_up());
        for _ in 0..3 {
            state.note_passive_failure();
        }
        wait_until(|| !state.is_up()).await;
        let at = t0.elapsed();
        assert!(at < Duration::from_secs(2), "passive failures marked DOWN at {at:?}, not at the next check");
        wait_until(|| checks.lock().expect("checks").len() >= 2).await;
        assert!(
            checks.lock().expect("checks")[1] < Duration::from_secs(2),
            "passive failures bring the next check forward"
        );
        stop.cancel();
        task.await.expect("checker task");
        assert_eq!(state.view().down_transitions, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn passive_off_and_success_reset() {
        let state = HealthState::new(true);
        state.note_passive_failure();
        state.note_passive_success();
        assert_eq!(state.take_passive(), 0, "a success clears unapplied failures");
        let stop = CancellationToken::new();
        let mut n = 0;
        let probe = || {
            n += 1;
            if n > 3 {
                stop.cancel();
            }
            async { res(true) }
        };
        let run = run(&state, || timing(0), probe, || false, stop.clone(), |_, _| {});
        let pokes = async {
            for _ in 0..5 {
                state.note_passive_failure();
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        };
        tokio::join!(run, pokes);
        assert!(state.is_up(), "passive = false ignores traffic failures");
        assert_eq!(state.view().failed_checks, 0);
    }

    /// A one-route node on a real socket answering every connection with `reply` (None: never
    /// answers); returns its backend.
    async fn raw_node(reply: Option<&'static [u8]>) -> (Backend, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                if let Some(r) = reply {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(r).await;
                    let _ = s.shutdown().await;
                }
                held.push(s);
            }
        });
        let counters = Arc::new(crate::core::counters::NodeCounters::default());
        (Backend::new("n".into(), addr, crate::core::backend::Origin::Static, counters, true, 1), task)
    }

    #[tokio::test]
    async fn http_check_classifies_like_haproxy() {
        let t = Duration::from_millis(300);
        type Case = (Option<&'static [u8]>, CheckKind, Option<u16>);
        let cases: [Case; 5] = [
            (Some(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n\"ok\""), CheckKind::L7OK, Some(200)),
            (Some(b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n"), CheckKind::L7OK, Some(302)),
            (Some(b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\n\"ko\""), CheckKind::L7STS, Some(404)),
            (Some(b"garbage\r\n\r\n"), CheckKind::L7RSP, None),
            (None, CheckKind::L7TOUT, None),
        ];
        for (reply, kind, code) in cases {
            let (b, task) = raw_node(reply).await;
            let r = http_check(&b, "/_plugin/cluster/health", t).await.expect("the check ran");
            assert_eq!((r.kind, r.code), (kind, code), "{reply:?}");
            if kind == CheckKind::L7TOUT {
                assert!(r.duration >= t, "{r:?}");
            }
            task.abort();
        }
        // Nothing listens on a port just released: refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let counters = Arc::new(crate::core::counters::NodeCounters::default());
        let b = Backend::new(
            "n".into(),
            ([127, 0, 0, 1], port).into(),
            crate::core::backend::Origin::Static,
            counters,
            true,
            1,
        );
        assert_eq!(http_check(&b, "/", t).await.map(|r| r.kind), Some(CheckKind::L4CON));
    }
}
