//! Ops view: auth on the ops listener, the /hastats page (well-formed, every node with its
//! state), haproxy's CSV layout, the JSON feed, Prometheus metrics, counters that move with
//! traffic and never go backwards across reloads.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use kuzzle_gateway::control::config::Config;
use kuzzle_gateway::core::backend::AdminState;

/// The header line of `/hastats;csv` printed by a real haproxy 2.6.12-1+deb12u4 (Debian 12) for
/// an HTTP proxy with checked servers (standard fields, "-", then the ssl/h2/h1 module fields).
const HAPROXY_26_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,";

const GOOD: &str = "kuzzle:kuzzle";

fn basic(cred: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred))
}

async fn ops(addr: std::net::SocketAddr, path: &str, cred: Option<&str>) -> Resp {
    let auth = cred.map(basic);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(addr, "GET", path, &headers, Bytes::new()).await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// RFC 4180 fields of one line (haproxy quotes fields that hold commas or quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// CSV rows as maps column -> value, keyed by svname; asserts the haproxy shape on the way.
fn parse_csv(body: &str) -> (Vec<String>, HashMap<String, HashMap<String, String>>) {
    let mut lines = body.lines();
    let header = lines.next().expect("CSV has a header line");
    assert_eq!(header, HAPROXY_26_HEADER, "CSV header differs from haproxy 2.6's");
    let names = csv_fields(header.trim_start_matches("# "));
    let mut order = Vec::new();
    let mut rows = HashMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f = csv_fields(l);
        assert_eq!(f.len(), names.len(), "row has {} fields, header {}: {l}", f.len(), names.len());
        let row: HashMap<String, String> = names.iter().cloned().zip(f).collect();
        assert_eq!(row["pxname"], "kuzzle", "{l}");
        order.push(row["svname"].clone());
        rows.insert(row["svname"].clone(), row);
    }
    (order, rows)
}

fn num(rows: &HashMap<String, HashMap<String, String>>, sv: &str, col: &str) -> u64 {
    let v = &rows[sv][col];
    v.parse().unwrap_or_else(|_| panic!("{sv}.{col} = {v:?} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_and_checked() {
    let gw = gateway(&gateway_toml("user = \"kuzzle\"\npassword = \"kuzzle\"\n")).await;
    let a = gw.stats_addr;
    for path in ["/hastats", "/hastats;csv", "/hastats;json", "/metrics"] {
        for cred in [None, Some("kuzzle:wrong"), Some("kuzzle:kuzzle2"), Some("admin:kuzzle"), Some("")] {
            let r = ops(a, path, cred).await;
            assert_eq!(r.status, 401, "{path} with {cred:?}");
            let www = r.header("www-authenticate").unwrap_or_else(|| panic!("{path}: 401 without WWW-Authenticate"));
            assert!(www.starts_with("Basic realm="), "{www}");
        }
        let garbage = request(a, "GET", path, &[("authorization", "Basic %%%not-base64")], Bytes::new()).await;
        assert_eq!(garbage.status, 401, "{path} with an undecodable header");
        let r = ops(a, path, Some(GOOD)).await;
        assert_eq!(r.status, 200, "{path} with kuzzle:kuzzle: {}", text(&r));
    }
    gw.shutdown().await;

    // user and password omitted from [stats]: no auth at all.
    let open = gateway(&gateway_toml("")).await;
    for path in ["/hastats", "/hastats;csv", "/hastats;json", "/metrics"] {
        assert_eq!(ops(open.stats_addr, path, None).await.status, 200, "{path} without auth configured");
    }
    open.shutdown().await;
}

/// A page of another site can make a browser send its cached basic auth with a form or an image:
/// state changes refuse a foreign Origin or Referer and need a request no form can make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_refuse_cross_site_requests() {
    let sim = Sim::start("xs1", &[]);
    let gw =
        gateway(&gateway_toml(&format!("user = \"kuzzle\"\npassword = \"kuzzle\"\n{}", nodes_toml(&[&sim])))).await;
    let a = gw.stats_addr;
    let auth = basic(GOOD);
    let host = a.to_string();
    let own_origin = format!("http://{host}");
    let state = |headers: Vec<(&'static str, String)>| {
        let auth = auth.clone();
        async move {
            let mut h: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            request(a, "POST", "/nodes/xs1/state", &h, Bytes::from("maint")).await
        }
    };
    let ct = || ("content-type", "application/json".to_string());
    let admin = || gw.core.snapshot().node("xs1").map(|b| b.admin());
    for (what, headers) in [
        ("a form's content type", vec![("content-type", "application/x-www-form-urlencoded".to_string())]),
        ("no content type at all", vec![]),
        ("a foreign Origin", vec![ct(), ("origin", "https://evil.example".to_string())]),
        ("a foreign Referer", vec![ct(), ("referer", "https://evil.example/page".to_string())]),
        ("Origin null", vec![ct(), ("origin", "null".to_string())]),
    ] {
        let r = state(headers).await;
        assert_eq!(r.status, 403, "{what}: {}", text(&r));
        assert_eq!(admin(), Some(AdminState::Ready), "{what} changed the node's state");
    }
    for reload in ["/reload", "/cluster/reset"] {
        let r =
            request(a, "POST", reload, &[("authorization", &auth), ("origin", "https://evil.example")], Bytes::new())
                .await;
        assert_eq!(r.status, 403, "{reload} from another site");
    }
    // The listener's own origin, JSON or X-Requested-With: obeyed.
    let r = state(vec![ct(), ("origin", own_origin.clone()), ("referer", format!("{own_origin}/hastats"))]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(admin(), Some(AdminState::Maint));
    let r = request(
        a,
        "POST",
        "/nodes/xs1/state",
        &[("authorization", &auth), ("x-requested-with", "curl")],
        Bytes::from("ready"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(admin(), Some(AdminState::Ready));
    // No node named: 404 (slicing the name out of this path once panicked the connection's task).
    let json_auth = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for path in ["/nodes/state", "/nodes//state", "/nodes/nope/state"] {
        let r = request(a, "POST", path, &json_auth, Bytes::from("{\"state\":\"drain\"}")).await;
        assert_eq!(r.status, 404, "{path}: {}", text(&r));
    }
    assert_eq!(request(a, "GET", "/healthz", &[], Bytes::new()).await.status, 200, "the listener still serves");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_csv_and_json_show_every_node_with_its_state() {
    let n1 = Sim::start("node_up", &[]);
    let n2 = Sim::start("node_drain", &[]);
    let mut n3 = Sim::start("node_down", &[]);
    let n4 = Sim::start("node_maint", &[]);
    let cfg = format!(
        "user = \"kuzzle\"\npassword = \"kuzzle\"\nrefresh = \"7s\"\n[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n{}",
        nodes_toml(&[&n1, &n2, &n3, &n4])
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    let a = gw.stats_addr;
    // DRAIN and MAINT through the ops endpoint operators use.
    for (node, state) in [("node_drain", "drain"), ("node_maint", "maint")] {
        let auth = basic(GOOD);
        let r =
            request(a, "POST", &format!("/nodes/{node}/state"), &[("authorization", &auth), JSON], Bytes::from(state))
                .await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    assert_eq!(gw.core.snapshot().node("node_drain").map(|b| b.admin()), Some(AdminState::Drain));
    // DOWN: the node is gone; health checks see it (and the flag is set in case they have not run yet).
    n3.kill();
    if let Some(b) = gw.core.snapshot().node("node_down") {
        b.health.set_up(false);
    }
    gw.reloads.record(false, "<script>alert(1)</script> & co".into());

    let (_, rows) = eventually(Duration::from_secs(15), "node_down shown DOWN in the CSV", || async move {
        let r = ops(a, "/hastats;csv", Some(GOOD)).await;
        let (order, rows) = parse_csv(&text(&r));
        (rows["node_down"]["status"] == "DOWN").then_some((order, rows))
    })
    .await;
    let r = ops(a, "/hastats;csv", Some(GOOD)).await;
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/csv")));
    let (order, _) = parse_csv(&text(&r));
    assert_eq!(order, ["FRONTEND", "node_up", "node_drain", "node_down", "node_maint", "BACKEND"]);
    assert_eq!(rows["FRONTEND"]["status"], "OPEN");
    assert_eq!(rows["node_up"]["status"], "UP");
    assert_eq!(rows["node_drain"]["status"], "DRAIN");
    assert_eq!(rows["node_maint"]["status"], "MAINT");
    assert_eq!(rows["BACKEND"]["status"], "UP");
    for (sv, ty, sid) in
        [("FRONTEND", "0", "0"), ("node_up", "2", "1"), ("node_maint", "2", "4"), ("BACKEND", "1", "0")]
    {
        assert_eq!(rows[sv]["type"], ty, "{sv} type");
        assert_eq!(rows[sv]["sid"], sid, "{sv} sid");
        assert_eq!(rows[sv]["mode"], "http");
        assert_eq!(rows[sv]["pid"], std::process::id().to_string());
    }
    assert_eq!(rows["node_up"]["addr"], n1.addr.to_string());
    // Weights are percents of a full node's share (slow start shows below 100).
    assert_eq!((rows["node_up"]["weight"].as_str(), rows["node_up"]["uweight"].as_str()), ("100", "100"));
    assert_eq!(rows["node_drain"]["weight"], "0");
    assert_eq!(rows["BACKEND"]["weight"], "100", "only node_up takes traffic");
    assert_eq!(rows["BACKEND"]["act"], "1");
    assert_eq!(rows["node_up"]["slim"], "", "not applicable columns stay empty");
    assert_eq!(rows["FRONTEND"]["econ"], "");

    // The page: well-formed, self-contained, every node with its state and colour.
    let r = ops(a, "/hastats", Some(GOOD)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/html")));
    let page = text(&r);
    let opts = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&page, opts)
        .unwrap_or_else(|e| panic!("page is not well-formed: {e}\n{page}"));
    let el = |name: &'static str| elems(&doc, name);
    assert!(el("script").next().is_none(), "no script, and the reload message was escaped");
    assert!(el("link").next().is_none() && el("img").next().is_none(), "no external assets");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"), "reload message escaped");
    let meta = |name: &str, attr: &str| {
        elems(&doc, "meta").find(|m| m.attribute(attr) == Some(name)).and_then(|m| m.attribute("content"))
    };
    assert_eq!(meta("refresh", "http-equiv"), Some("7"));
    assert!(meta("viewport", "name").is_some_and(|c| c.contains("width=device-width")));
    assert!(
        el("a").any(|l| l.attribute("href").is_some_and(|h| h.ends_with("?norefresh"))),
        "a link stops the refresh"
    );
    let row = |id: &str| {
        el("tr").find(|t| t.attribute("id") == Some(id)).unwrap_or_else(|| panic!("no row {id} in the page"))
    };
    let row_text = |id: &str| row(id).descendants().filter_map(|n| n.text()).collect::<Vec<_>>().join(" ");
    for (node, class, status) in [
        ("node_up", "up", "UP"),
        ("node_drain", "drain", "DRAIN"),
        ("node_down", "down", "DOWN"),
        ("node_maint", "maint", "MAINT"),
    ] {
        let tr = row(&format!("node-{node}"));
        assert_eq!(tr.attribute("class"), Some(class), "{node} row colour");
        let status_cell = tr
            .descendants()
            .find(|n| n.attribute("class").is_some_and(|c| c.contains("node-status")))
            .and_then(|c| c.text())
            .unwrap_or_default();
        assert!(status_cell.ends_with(status), "{node} status cell {status_cell:?}");
        let link = tr.descendants().find(|n| n.has_tag_name("a")).and_then(|a| a.attribute("href")).unwrap_or_default();
        assert!(
            link.starts_with("http://127.0.0.1:") && link.ends_with(&format!("/{node}/")),
            "{node} links to its prefix: {link}"
        );
    }
    assert!(row_text("frontend").contains("Frontend"));
    assert!(row_text("backend").contains("UP"));
    // Every data row has as many cells as the header announces.
    let cols: usize = el("th")
        .find(|t| t.attribute("class") == Some("px"))
        .and_then(|t| t.attribute("colspan"))
        .and_then(|c| c.parse().ok())
        .expect("colspan");
    for tr in el("tr").filter(|t| t.attribute("id").is_some()) {
        let cells = tr.children().filter(|c| c.has_tag_name("td")).count();
        assert_eq!(cells, cols, "row {:?}", tr.attribute("id"));
    }
    let r = ops(a, "/hastats?norefresh", Some(GOOD)).await;
    assert!(!text(&r).contains("http-equiv=\"refresh\""), "?norefresh stops the refresh");

    // JSON.
    let j = ops(a, "/hastats;json", Some(GOOD)).await.json();
    let nodes = j["nodes"].as_array().expect("nodes array");
    let status: HashMap<&str, &str> =
        nodes.iter().map(|n| (n["name"].as_str().unwrap_or(""), n["status"].as_str().unwrap_or(""))).collect();
    assert_eq!(status["node_up"], "UP");
    assert_eq!(status["node_drain"], "DRAIN");
    assert_eq!(status["node_down"], "DOWN");
    assert_eq!(status["node_maint"], "MAINT");
    assert_eq!(j["process"]["pid"], std::process::id());
    assert_eq!(j["process"]["last_reload"]["ok"], false);
    gw.shutdown().await;
}

fn elems<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    doc.descendants().filter(move |n| n.has_tag_name(name))
}

/// Parse /metrics strictly: every sample belongs to a family announced by exactly one HELP and
/// one TYPE line before its samples, then with the prometheus-parse crate. Returns
/// "name{labels}" -> value for the counters.
fn parse_metrics(body: &str) -> HashMap<String, f64> {
    let mut help: HashMap<&str, usize> = HashMap::new();
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            *help.entry(name).or_default() += 1;
            assert!(rest.len() > name.len() + 1, "empty HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            assert!(["counter", "gauge"].contains(&ty), "{line}");
            assert!(types.insert(name, ty).is_none(), "TYPE twice for {name}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(name.starts_with("kuzzle_gateway_"), "{line}");
            assert!(types.contains_key(name) && help.get(name) == Some(&1), "{name}: sample before its HELP/TYPE");
            if types[name] == "counter" {
                assert!(name.ends_with("_total"), "counter {name} should end in _total");
            }
        }
    }
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads /metrics");
    assert!(!scrape.samples.is_empty());
    let mut counters = HashMap::new();
    for s in &scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v) => v,
            prometheus_parse::Value::Gauge(_) => continue,
            ref other => panic!("{}: unexpected value kind {other:?}", s.metric),
        };
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        counters.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    counters
}

fn metrics_of(h: &kuzzle_gateway::app::Handle) -> HashMap<String, f64> {
    parse_metrics(&kuzzle_gateway::ops::metrics::render_view(&kuzzle_gateway::ops::hastats::collect(
        &h.core, &h.reloads,
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic_and_survive_reloads() {
    let n1 = Sim::start("c1", &[]);
    let n2 = Sim::start("c2", &[]);
    let mut n3 = Sim::start("c3", &[]);
    // Long check interval: c3 stays UP after it dies, so traffic finds the dead node.
    let base = "[health]\ninterval = \"1h\"\n[balance]\nalgorithm = \"roundrobin\"\n";
    let toml = gateway_toml(&format!("{base}{}", nodes_toml(&[&n1, &n2, &n3])));
    let gw = gateway(&toml).await;
    let (a, h) = (gw.stats_addr, gw.http_addr);
    let before = parse_metrics(&text(&ops(a, "/metrics", None).await));

    let mut c = Client::connect(h).await;
    for _ in 0..12 {
        assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.status, 200);
    }
    let body = Bytes::from(vec![b'x'; 4000]);
    let r = c.send("POST", "/c1/_sim/echo", &[("content-type", "text/plain")], body).await;
    assert_eq!(r.status, 200);
    let mut ws = ws(h, "/c2/").await;
    let (resp, _) =
        ws_call(&mut ws, serde_json::json!({"controller": "server", "action": "now", "requestId": "r1"})).await;
    assert_eq!(resp["status"], 200);
    let j = ops(a, "/hastats;json", None).await.json();
    assert_eq!(j["frontend"]["tunnels"], 1, "one tunnel open");
    let c2 = j["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == "c2")).cloned().expect("c2");
    assert_eq!(c2["traffic"]["tunnels"], 1);

    n3.kill();
    let r = c.send("GET", "/c3/_now", &[], Bytes::new()).await;
    assert!(r.status >= 500, "dead pinned node: {}", r.status);

    let (_, rows) = parse_csv(&text(&ops(a, "/hastats;csv", None).await));
    assert!(num(&rows, "FRONTEND", "req_tot") >= 14, "requests counted");
    assert!(num(&rows, "FRONTEND", "stot") >= 2, "connections counted");
    assert!(num(&rows, "FRONTEND", "hrsp_2xx") >= 13);
    assert!(num(&rows, "FRONTEND", "hrsp_5xx") >= 1);
    assert!(num(&rows, "FRONTEND", "ereq") >= 1, "the gateway's own error counted");
    assert!(num(&rows, "FRONTEND", "bin") >= 4000 && num(&rows, "FRONTEND", "bout") >= 4000);
    assert!(num(&rows, "c1", "bin") >= 4000, "echo body counted on c1");
    assert!(num(&rows, "c1", "bout") >= 4000);
    assert!(num(&rows, "c3", "econ") >= 1, "connect failures to the dead node");
    assert!(num(&rows, "c2", "hrsp_1xx") >= 1, "the WebSocket upgrade");
    let stot: u64 = ["c1", "c2", "c3"].iter().map(|n| num(&rows, n, "stot")).sum();
    assert!(stot >= 15);
    assert_eq!(num(&rows, "BACKEND", "stot"), stot, "backend = sum of nodes");
    assert!(num(&rows, "c1", "hrsp_2xx") >= 4 && num(&rows, "c2", "hrsp_2xx") >= 4, "round robin spread");
    assert!(rows["c1"]["lastsess"].parse::<i64>().is_ok_and(|s| s >= 0));
    drop(ws);
    eventually(Duration::from_secs(10), "tunnel closed in the stats", || async move {
        let j = ops(a, "/hastats;json", None).await.json();
        (j["frontend"]["tunnels"] == 0).then_some(())
    })
    .await;

    let during = parse_metrics(&text(&ops(a, "/metrics", None).await));
    let key = "kuzzle_gateway_node_sessions_total{node=c1}";
    assert!(during[key] >= 5.0, "{key} = {}", during[key]);
    assert!(during["kuzzle_gateway_requests_total{}"] >= 14.0);
    assert!(during["kuzzle_gateway_node_responses_total{code=2xx,node=c1}"] >= 4.0);
    assert_monotonic(&before, &during);

    // Reload without c1, let it drain away, then bring it back: its counters continue.
    let g = &gw;
    g.apply_config(Config::parse(&gateway_toml(&format!("{base}{}", nodes_toml(&[&n2]))), "<t>").expect("config"));
    eventually(Duration::from_secs(10), "c1 pruned once idle", || async move {
        g.core.prune(std::time::Instant::now());
        g.core.snapshot().node("c1").is_none().then_some(())
    })
    .await;
    let without = metrics_of(g);
    assert!(!without.contains_key(key), "a node that left has no series");
    g.apply_config(Config::parse(&toml, "<t>").expect("config"));
    let after = metrics_of(g);
    assert!(after[key] >= during[key], "c1 kept its history: {} then {}", during[key], after[key]);
    assert_monotonic(&during, &after);
    assert_monotonic(&without, &after);
    gw.shutdown().await;
}

fn assert_monotonic(a: &HashMap<String, f64>, b: &HashMap<String, f64>) {
    for (k, v) in a {
        if let Some(w) = b.get(k) {
            assert!(w >= v, "counter {k} went backwards: {v} then {w}");
        }
    }
}
