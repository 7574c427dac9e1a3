//! Certificates: SNI among several, renewal and reload (watched or not), broken and expired files, `--check`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_among_several_certificates() {
    let dir = scratch_dir("tls-sni");
    let default = make(&["localhost"], None);
    let a = make(&["a.test"], None);
    let wild = make(&["*.w.test"], None);
    let named = make(&["other.test"], None);
    let mut toml = String::from("[tls]\nlisten = \"127.0.0.1:0\"\n");
    for (tag, m) in [("default", &default), ("a", &a), ("w", &wild), ("n", &named)] {
        let (c, k) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}-key.pem")));
        std::fs::write(&c, &m.cert_pem).expect("write");
        std::fs::write(&k, &m.key_pem).expect("write");
        if tag == "default" {
            toml.push_str(&format!("cert = {:?}\nkey = {:?}\n", c.display().to_string(), k.display().to_string()));
        } else {
            toml.push_str(&format!(
                "[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            ));
            if tag == "n" {
                toml.push_str("names = [\"named.test\"]\n");
            }
        }
    }
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&format!("{toml}{}", nodes_toml(&[&n1])))).await;
    let addr = gw.tls_addr.expect("TLS listener");
    let c = any_cert(&[]);
    for (sni, want, what) in [
        ("a.test", &a.der, "exact SAN"),
        ("A.Test", &a.der, "names are case-insensitive"),
        ("x.w.test", &wild.der, "wildcard SAN, one label"),
        ("y.x.w.test", &default.der, "a wildcard covers one label only"),
        ("w.test", &default.der, "nor its parent"),
        ("named.test", &named.der, "names given in the configuration"),
        ("other.test", &default.der, "configured names replace the certificate's"),
        ("unknown.test", &default.der, "unknown name: the default"),
        ("127.0.0.1", &default.der, "no SNI: the default"),
    ] {
        assert!(served(&c, addr, sni).await == *want, "{sni}: {what}");
    }
    // The chosen certificate serves requests, HTTP/1.1 and HTTP/2.
    let s = connect_as(&c, addr, "a.test").await;
    let (mut sender, conn) = http1::handshake(TokioIo::new(s)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    let req =
        http::Request::builder().uri("/_now").header("host", "a.test").body(Full::new(Bytes::new())).expect("req");
    assert_eq!(sender.send_request(req).await.expect("response").status(), 200);
    let v = stats_json(&gw).await;
    let certs = v["process"]["tls"]["certificates"].as_array().expect("certificates on /hastats;json").clone();
    assert_eq!(certs.len(), 4, "{v}");
    assert_eq!(certs[0]["place"], "tls");
    assert_eq!(certs[2]["names"], json!(["*.w.test"]));
    assert_eq!(certs[3]["names"], json!(["named.test"]));
    assert!(certs.iter().all(|c| c["status"] == "ok"), "{certs:?}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_applies_without_dropping_wss_sessions() {
    let pki = Pki::new("renew");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2])))).await;
    let addr = gw.tls_addr.expect("TLS listener");
    let trusting = connector(&pki.der);
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(wss(&trusting, addr, "/").await);
    }
    let any = any_cert(&[]);
    assert!(served(&any, addr, "localhost").await == pki.der);

    // Renewal half done: the new certificate is in place, its key not yet. Refused, shown, and
    // the old pair keeps serving.
    let new = make(&["localhost"], None);
    replace(&pki.cert, &new.cert_pem);
    let v = eventually(Duration::from_secs(5), "the half-written pair refused on /hastats", || async {
        let v = stats_json(&gw).await;
        (v["process"]["tls"]["certificates"][0]["status"] == "refused").then_some(v)
    })
    .await;
    let cert0 = &v["process"]["tls"]["certificates"][0];
    let err = cert0["error"].as_str().expect("error text");
    assert!(err.contains("do not match") && err.contains("key.pem"), "{err}");
    assert!(served(&any, addr, "localhost").await == pki.der, "the old pair serves while the new one is half written");
    let page = get(gw.stats_addr, "/hastats").await;
    assert!(String::from_utf8_lossy(&page.body).contains("REFUSED"), "the page shows the refusal");

    // The key arrives: new handshakes get the new certificate within seconds.
    let t0 = Instant::now();
    replace(&pki.key, &new.key_pem);
    eventually(Duration::from_secs(5), "new handshakes served the renewed certificate", || async {
        (served(&any, addr, "localhost").await == new.der).then_some(())
    })
    .await;
    println!("renewal: new certificate served {:?} after the key was renamed in", t0.elapsed());
    let v = stats_json(&gw).await;
    assert_eq!(v["process"]["tls"]["certificates"][0]["status"], "ok", "{v}");
    assert_eq!(v["process"]["tls"]["renewals"], 1, "{v}");

    // Every session opened before the renewal carries on.
    for (i, w) in sessions.iter_mut().enumerate() {
        let id = format!("after-{i}");
        let r = call(w, json!({"controller": "server", "action": "now", "requestId": id})).await;
        assert_eq!(r["status"], 200, "session {i}: {r}");
    }
    // And a client trusting only the new certificate now connects.
    let mut w = wss(&connector(&new.der), addr, "/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "now", "requestId": "n"})).await;
    assert_eq!(r["status"], 200);
    drop((sessions, w));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_are_refused_and_the_old_pair_kept() {
    let pki = Pki::new("broken");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // From a file, so that a reload can be asked for too.
    let file = pki.dir.join("gateway.toml");
    std::fs::write(&file, gateway_toml(&toml)).expect("write config");
    let cfg = Config::load(&file).expect("config");
    let gw = kuzzle_gateway::app::bind_and_start(cfg).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    let good_key = std::fs::read_to_string(&pki.key).expect("key");

    replace(&pki.key, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
    let v = eventually(Duration::from_secs(5), "the broken key refused on /hastats", || async {
        let v = stats_json(&gw).await;
        (v["process"]["tls"]["certificates"][0]["status"] == "refused").then_some(v)
    })
    .await;
    let err = v["process"]["tls"]["certificates"][0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("key.pem") && err.contains("tls.key"), "the error names the file and the key: {err}");
    assert_eq!(v["process"]["tls"]["refused"], 1, "{v}");
    assert!(served(&any, addr, "localhost").await == pki.der, "the old pair still serves");
    assert_eq!(https(&connector(&pki.der), addr, "/_now").await.status, 200);
    let metrics = String::from_utf8_lossy(&get(gw.stats_addr, "/metrics").await.body).into_owned();
    let refused = format!("kuzzle_gateway_tls_certificate_refused{{cert=\"{}\"}} 1", pki.cert.display());
    assert!(metrics.contains(&refused), "{refused} not in /metrics");
    assert!(metrics.contains("kuzzle_gateway_tls_renewals_total{result=\"refused\"} 1"), "refusals counted");
    // A reload meanwhile is not refused for it: the pair is the running one, kept.
    let msg = gw.reload.reload().await.expect("reload with a half-renewed pair");
    assert!(msg.contains("reloaded"), "{msg}");
    assert!(served(&any, addr, "localhost").await == pki.der);

    // Put back: the error clears without counting a renewal (the same pair serves).
    replace(&pki.key, &good_key);
    eventually(Duration::from_secs(5), "the restored key accepted", || async {
        (stats_json(&gw).await["process"]["tls"]["certificates"][0]["status"] == "ok").then_some(())
    })
    .await;
    gw.shutdown().await;
}

#[test]
fn check_reports_certificate_problems_naming_the_file() {
    let dir = scratch_dir("tls-check");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let good = make(&["localhost"], None);
    let other = make(&["localhost"], None);
    let expired = make(&["old.test"], Some((2000, 2001)));
    let cert = write("cert.pem", &good.cert_pem);
    let key = write("key.pem", &good.key_pem);
    let other_key = write("other-key.pem", &other.key_pem);
    let old_cert = write("old.pem", &expired.cert_pem);
    let old_key = write("old-key.pem", &expired.key_pem);
    let config = |name: &str, extra: &str| {
        write(name, &format!("[gateway]\nlisten = \"127.0.0.1:0\"\n[stats]\nlisten = \"127.0.0.1:0\"\n[tls]\nlisten = \"127.0.0.1:0\"\n{extra}"))
    };
    let pair =
        |c: &Path, k: &Path| format!("cert = {:?}\nkey = {:?}\n", c.display().to_string(), k.display().to_string());

    let ok = config("ok.toml", &pair(&cert, &key));
    let (passed, err) = check(&ok);
    assert!(passed, "a good pair fails --check: {err}");

    for (name, extra, needles) in [
        (
            "missing.toml",
            pair(&dir.join("nope.pem"), &key),
            vec!["missing.toml:7: key `tls.cert`", "nope.pem", "cannot read"],
        ),
        ("unreadable.toml", pair(&cert, &dir), vec!["key `tls.key`", "cannot read"]),
        ("mismatch.toml", pair(&cert, &other_key), vec!["key `tls.key`", "other-key.pem", "do not match"]),
        (
            "expired.toml",
            format!("{}[[tls.certificate]]\n{}", pair(&cert, &key), pair(&old_cert, &old_key)),
            vec!["expired.toml:10: key `tls.certificate[0].cert`", "old.pem", "expired on 2001-01-01"],
        ),
    ] {
        let f = config(name, &extra);
        let (passed, err) = check(&f);
        assert!(!passed, "{name}: --check passed: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_added_by_a_reload_is_served_and_watched() {
    let pki = Pki::new("added");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    // The configuration lives elsewhere: events in the certificates' directory are theirs only.
    let conf_dir = scratch_dir("tls-added-conf");
    let file = conf_dir.join("gateway.toml");
    let base = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // No config file watch: only the certificate watcher may pick up the renewal below.
    let no_watch = |t: String| t.replacen("[gateway]\n", "[gateway]\nwatch = false\n", 1);
    std::fs::write(&file, no_watch(gateway_toml(&base))).expect("write config");
    let gw = kuzzle_gateway::app::bind_and_start(Config::load(&file).expect("config")).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    assert!(served(&any, addr, "api.test").await == pki.der, "no pair for api.test yet: the default");

    // A pair in another directory, added by a reload.
    // (Not under the first pair's directory: that one is watched already.)
    let sub = scratch_dir("tls-added-api");
    let first = make(&["api.test"], None);
    let (cert, key) = (sub.join("cert.pem"), sub.join("key.pem"));
    std::fs::write(&cert, &first.cert_pem).expect("write");
    std::fs::write(&key, &first.key_pem).expect("write");
    let entry = format!(
        "[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    // [[tls.certificate]] must follow [tls] and come before [[node]]: rebuild the text.
    let text = no_watch(gateway_toml(&format!("{}{entry}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]))));
    std::fs::write(&file, text).expect("write config");
    gw.reload.reload().await.expect("reload");
    assert!(served(&any, addr, "api.test").await == first.der, "the added pair serves its name");

    // Its directory is watched: a renewal there applies without another reload.
    let renewed = make(&["api.test"], None);
    replace(&key, &renewed.key_pem);
    replace(&cert, &renewed.cert_pem);
    eventually(Duration::from_secs(5), "the renewed api.test pair served", || async {
        (served(&any, addr, "api.test").await == renewed.der).then_some(())
    })
    .await;
    assert!(served(&any, addr, "localhost").await == pki.der, "the default pair is untouched");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&sub);
    let _ = std::fs::remove_dir_all(&conf_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_served_but_shown_expired() {
    let dir = scratch_dir("tls-expired");
    let old = make(&["localhost"], Some((2000, 2001)));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &old.cert_pem).expect("write");
    std::fs::write(&key, &old.key_pem).expect("write");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&cert, &key), nodes_toml(&[&n1])))).await;
    // As nginx and haproxy do: served (clients decide), and said loudly.
    assert!(served(&any_cert(&[]), gw.tls_addr.expect("TLS"), "localhost").await == old.der);
    let v = stats_json(&gw).await;
    assert_eq!(v["process"]["tls"]["certificates"][0]["status"], "expired", "{v}");
    let page = String::from_utf8_lossy(&get(gw.stats_addr, "/hastats").await.body).into_owned();
    assert!(page.contains("EXPIRED"), "the page shows it");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_off_renewed_files_wait_for_a_reload() {
    let pki = Pki::new("nowatch");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let conf_dir = scratch_dir("tls-nowatch-conf");
    let file = conf_dir.join("gateway.toml");
    let text = gateway_toml(&format!("{}watch = false\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1])))
        .replacen("[gateway]\n", "[gateway]\nwatch = false\n", 1);
    std::fs::write(&file, text).expect("write config");
    let gw = kuzzle_gateway::app::bind_and_start(Config::load(&file).expect("config")).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    let new = make(&["localhost"], None);
    replace(&pki.key, &new.key_pem);
    replace(&pki.cert, &new.cert_pem);
    // Twice the debounce and more: a watcher would have loaded it by then.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(served(&any, addr, "localhost").await == pki.der, "[tls] watch = false: the files are not watched");
    gw.reload.reload().await.expect("reload");
    assert!(served(&any, addr, "localhost").await == new.der, "a reload reads them");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&conf_dir);
}
