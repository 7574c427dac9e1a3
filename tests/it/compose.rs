//! The Docker deployment files, checked without a container engine: every compose file parses and
//! holds together (services, ports, images, build context, health conditions), the Dockerfile and
//! `.dockerignore` are what the docs say, the stacks' gateway configs pass `--check`, the
//! documented `docker compose` commands name real files, services and profiles, and
//! `docker compose config` (or Debian's `docker-compose config`) accepts all of it.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{check_config, with_test_certs};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Files of `dir` (relative to the repository) whose name ends with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    v.sort();
    v
}

fn load(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document expected");
    docs.remove(0)
}

fn service_names(doc: &Yaml) -> Vec<String> {
    doc["services"].as_hash().map_or_else(Vec::new, |h| h.keys().filter_map(|k| k.as_str().map(String::from)).collect())
}

fn svc<'a>(doc: &'a Yaml, file: &str, name: &str) -> &'a Yaml {
    let s = &doc["services"][name];
    assert!(!s.is_badvalue(), "{file}: no service {name:?} (have {:?})", service_names(doc));
    s
}

/// A YAML list of scalars as strings (ports, environment, sysctls...).
fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|x| match x {
                    Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
                    Yaml::Integer(i) => Some(i.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn profiles(s: &Yaml) -> Vec<String> {
    strs(&s["profiles"])
}

/// `depends_on` as (service, condition) pairs; the short list form has no condition.
fn depends_on(s: &Yaml) -> Vec<(String, Option<String>)> {
    match &s["depends_on"] {
        Yaml::Array(v) => v.iter().filter_map(|x| x.as_str().map(|n| (n.to_string(), None))).collect(),
        Yaml::Hash(h) => h
            .iter()
            .filter_map(|(k, v)| k.as_str().map(|n| (n.to_string(), v["condition"].as_str().map(String::from))))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a service has a working health check: its own, or the one our Dockerfile bakes in.
fn has_healthcheck(s: &Yaml) -> bool {
    let hc = &s["healthcheck"];
    if !hc.is_badvalue() {
        return hc["disable"].as_bool() != Some(true) && !hc["test"].is_badvalue();
    }
    s["image"].as_str() == Some("kuzzle-gateway:local") || !s["build"].is_badvalue()
}

/// Checks every compose file must pass, whatever its stack.
fn check_common(file: &str, doc: &Yaml) {
    let names = service_names(doc);
    assert!(!names.is_empty(), "{file}: no services");
    let dir = root().join(file).parent().expect("compose file dir").to_path_buf();
    for name in &names {
        let s = svc(doc, file, name);
        let build = &s["build"];
        assert!(s["image"].as_str().is_some() || !build.is_badvalue(), "{file}: {name} has neither image nor build");
        if !build.is_badvalue() {
            let context = build["context"].as_str().unwrap_or_else(|| panic!("{file}: {name}: build without context"));
            let ctx = dir.join(context).canonicalize().expect("build context exists");
            assert_eq!(
                ctx,
                root().canonicalize().expect("root"),
                "{file}: {name}: the build context must be the repository"
            );
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(ctx.join(dockerfile).is_file(), "{file}: {name}: no {dockerfile} in the build context");
            assert_eq!(s["image"].as_str(), Some("kuzzle-gateway:local"), "{file}: {name}: our image keeps one tag");
        }
        for p in strs(&s["ports"]) {
            let parts: Vec<&str> = p.split(':').collect();
            assert!(
                parts.len() == 2 && parts.iter().all(|x| x.parse::<u16>().is_ok()),
                "{file}: {name}: port {p:?} is not \"HOST:CONTAINER\""
            );
        }
        for (dep, cond) in depends_on(s) {
            let d = svc(doc, file, &dep);
            let cond = cond.unwrap_or_else(|| panic!("{file}: {name} depends on {dep} without a condition"));
            match cond.as_str() {
                "service_healthy" => {
                    assert!(has_healthcheck(d), "{file}: {name} waits for {dep} healthy, which has no health check")
                }
                "service_completed_successfully" => {
                    assert!(
                        !d["command"].is_badvalue(),
                        "{file}: {name} waits for one-shot {dep}, which has no command"
                    )
                }
                "service_started" => {}
                other => panic!("{file}: {name}: unknown depends_on condition {other:?}"),
            }
            if profiles(s).is_empty() {
                assert!(profiles(d).is_empty(), "{file}: {name} (always on) depends on {dep}, which is in a profile");
            }
        }
        if let Some(u) = s["user"].as_str() {
            // Only the one-shot certificate writer runs as root, to own the volume it fills.
            assert!(!u.starts_with('0') || name == "tls-init", "{file}: {name} runs as root");
        }
    }
}

/// A service that `--scale N` can multiply: no fixed container name, no host port.
fn assert_scalable(file: &str, doc: &Yaml, name: &str) {
    let s = svc(doc, file, name);
    assert!(s["container_name"].is_badvalue(), "{file}: {name} has a container_name: cannot scale");
    assert!(s["ports"].is_badvalue(), "{file}: {name} publishes ports: cannot scale");
}

fn gateway_ports(file: &str, doc: &Yaml, name: &str, host: [u16; 3]) {
    let ports = strs(&svc(doc, file, name)["ports"]);
    for (h, c) in host.iter().zip([7512, 7443, 7575]) {
        assert!(ports.contains(&format!("{h}:{c}")), "{file}: {name} does not publish {h}:{c} (has {ports:?})");
    }
}

#[test]
fn every_compose_file_parses_and_holds_together() {
    let ymls = files("docker-compose", ".yml");
    assert!(ymls.len() >= 2, "expected the Kuzzle and the simulated stacks, found {ymls:?}");
    for f in &ymls {
        check_common(f, &load(f));
    }
}

#[test]
fn kuzzle_stack() {
    let f = "docker-compose/docker-compose.yml";
    let doc = load(f);
    let names: BTreeSet<String> = service_names(&doc).into_iter().collect();
    for want in ["gateway", "tls-init", "kuzzle", "redis", "elasticsearch"] {
        assert!(names.contains(want), "{f}: no service {want}");
    }
    gateway_ports(f, &doc, "gateway", [7512, 7443, 7575]);
    let k = svc(&doc, f, "kuzzle");
    assert_eq!(k["image"].as_str(), Some("kuzzleio/kuzzle:2"));
    assert_scalable(f, &doc, "kuzzle");
    assert_eq!(k["ulimits"]["nofile"].as_i64(), Some(65536), "{f}: kuzzle nofile");
    let env = strs(&k["environment"]);
    for want in [
        "kuzzle_services__storageEngine__client__node=http://elasticsearch:9200",
        "kuzzle_services__internalCache__node__host=redis",
        "kuzzle_services__memoryStorage__node__host=redis",
    ] {
        assert!(env.iter().any(|e| e == want), "{f}: kuzzle environment lacks {want}");
    }
    let deps = depends_on(k);
    for d in ["redis", "elasticsearch"] {
        assert!(deps.contains(&(d.into(), Some("service_healthy".into()))), "{f}: kuzzle must wait for {d} healthy");
    }
    let es = svc(&doc, f, "elasticsearch");
    assert_eq!(
        es["ulimits"]["nofile"].as_i64(),
        Some(65536),
        "{f}: Elasticsearch open-files limit (Kuzzle's compose: 65536)"
    );
    assert!(strs(&es["environment"]).iter().any(|e| e == "cluster.name=kuzzle"), "{f}: Elasticsearch cluster.name");
    assert!(es["image"].as_str().is_some_and(|i| i.starts_with("kuzzleio/elasticsearch:7")));
    let g = depends_on(svc(&doc, f, "gateway"));
    assert!(g.contains(&("redis".into(), Some("service_healthy".into()))), "{f}: gateway must wait for redis healthy");
    assert!(
        g.iter().all(|(d, _)| d != "kuzzle"),
        "{f}: the gateway must not wait for Kuzzle (nodes join through Redis)"
    );
}

#[test]
fn simulated_stack_and_redis_cluster_profile() {
    let f = "docker-compose/docker-compose.sim.yml";
    let doc = load(f);
    let names: BTreeSet<String> = service_names(&doc).into_iter().collect();
    assert!(!names.contains("elasticsearch") && !names.contains("kuzzle"), "{f}: no Kuzzle, no Elasticsearch");
    gateway_ports(f, &doc, "gateway", [7512, 7443, 7575]);
    gateway_ports(f, &doc, "gateway-rc", [8512, 8443, 8575]);
    for name in ["sim", "sim-rc"] {
        assert_scalable(f, &doc, name);
        let cmd = strs(&svc(&doc, f, name)["command"]).join(" ");
        assert!(
            cmd.contains("kuzzle-node-sim") && cmd.contains("--kuzzle2"),
            "{f}: {name} is not a Kuzzle 2 sim: {cmd}"
        );
    }
    assert!(strs(&svc(&doc, f, "sim-rc")["command"]).join(" ").contains("--redis-cluster"));
    let in_profile: BTreeSet<String> =
        names.iter().filter(|n| profiles(svc(&doc, f, n)).contains(&"redis-cluster".to_string())).cloned().collect();
    let want: BTreeSet<String> =
        ["redis-cluster-1", "redis-cluster-2", "redis-cluster-3", "redis-cluster-init", "sim-rc", "gateway-rc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(in_profile, want, "{f}: services of the redis-cluster profile");
    for n in ["redis-cluster-1", "redis-cluster-2", "redis-cluster-3"] {
        let cmd = strs(&svc(&doc, f, n)["command"]).join(" ");
        assert!(cmd.contains("--cluster-enabled yes"), "{f}: {n} is not a cluster node");
    }
    let rc_cmd = strs(&svc(&doc, f, "gateway-rc")["command"]);
    let cfg = rc_cmd.last().expect("gateway-rc --config FILE");
    let name = Path::new(cfg).file_name().expect("config file name").to_string_lossy().into_owned();
    assert!(root().join("docker-compose").join(&name).is_file(), "{f}: gateway-rc runs {cfg}, not in docker-compose/");
}

#[test]
fn dockerfile_and_dockerignore() {
    let d = read("docker-compose/Dockerfile");
    let lines: Vec<&str> = d.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "Dockerfile: multi-stage build expected");
    assert!(
        lines.iter().any(|l| l.starts_with("COPY --from=build")),
        "Dockerfile: runtime stage copies from the build stage"
    );
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("Dockerfile: no USER");
    let user = user.split(':').next().unwrap_or("").trim();
    assert!(!user.is_empty() && user != "root" && user != "0", "Dockerfile: runs as {user}");
    let hc = lines
        .iter()
        .position(|l| l.starts_with("HEALTHCHECK"))
        .map(|i| lines[i..].iter().take(3).copied().collect::<Vec<_>>().join(" "))
        .expect("Dockerfile: no HEALTHCHECK");
    // The ops port of the baked-in config is where the health check must look.
    let cfg: toml::Table = read("docker-compose/gateway.toml").parse().expect("gateway.toml is TOML");
    let ops = cfg["stats"]["listen"].as_str().expect("[stats] listen");
    let port = ops.rsplit(':').next().expect("port");
    assert!(
        hc.contains(&format!("127.0.0.1:{port}/healthz")),
        "Dockerfile: HEALTHCHECK must hit /healthz on the ops port {port}: {hc}"
    );
    let expose = lines.iter().find_map(|l| l.strip_prefix("EXPOSE ")).expect("Dockerfile: no EXPOSE");
    for p in ["7512", "7443", "7575"] {
        assert!(expose.split_whitespace().any(|x| x == p), "Dockerfile: EXPOSE lacks {p}");
    }
    assert!(
        d.contains("COPY docker-compose/*.toml /etc/kuzzle-gateway/"),
        "Dockerfile: the stacks' configs are baked in"
    );

    let ignore = read(".dockerignore");
    let entries: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for want in [".git", "**/target", "**/node_modules"] {
        assert!(entries.contains(&want), ".dockerignore lacks {want}");
    }
    // What the build needs must not be ignored.
    for needed in ["src", "sim", "Cargo.toml", "Cargo.lock", "docker-compose/*.toml", "bench"] {
        assert!(!entries.contains(&needed), ".dockerignore drops {needed}, which the build needs");
    }
}

#[test]
fn stack_gateway_configs_pass_check() {
    let tomls = files("docker-compose", ".toml");
    assert!(tomls.iter().any(|f| f.ends_with("/gateway.toml")), "docker-compose/gateway.toml missing");
    let tmp = std::env::temp_dir().join(format!("kgw-compose-{}", std::process::id()));
    for f in &tomls {
        let dir = tmp.join(Path::new(f).file_stem().expect("stem"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let checked = with_test_certs(&root().join(f), &dir);
        check_config(&checked, f);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A `docker compose` / `docker-compose` command found in the docs.
#[derive(Debug)]
struct DocCommand {
    source: String,
    line: String,
    files: Vec<String>,
    profiles: Vec<String>,
    scales: Vec<String>,
}

/// Every compose command written in the deployment docs and in the compose files' headers.
fn documented_commands() -> Vec<DocCommand> {
    let mut sources = vec!["docker-compose/README.md".to_string(), "README.md".to_string()];
    sources.extend(files("docker-compose", ".yml"));
    if root().join("docs/migration.md").is_file() {
        sources.push("docs/migration.md".into());
    }
    let mut out = Vec::new();
    for src in sources {
        for raw in read(&src).lines() {
            let l = raw.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
            let l = l.trim_start_matches('`');
            let start = ["docker compose ", "docker-compose "].iter().find_map(|p| l.find(p).filter(|&i| i == 0));
            if start.is_none() {
                continue;
            }
            // Up to a shell comment or the end of inline code.
            let cmd = l.split(" #").next().unwrap_or(l).split('`').next().unwrap_or(l).trim().to_string();
            let toks: Vec<&str> = cmd.split_whitespace().collect();
            let (mut files, mut profiles, mut scales) = (Vec::new(), Vec::new(), Vec::new());
            let mut i = 0;
            while i < toks.len() {
                match toks[i] {
                    "-f" | "--file" => files.push(toks.get(i + 1).expect("-f FILE").to_string()),
                    "--profile" => profiles.push(toks.get(i + 1).expect("--profile NAME").to_string()),
                    "--scale" => {
                        let s = toks.get(i + 1).expect("--scale SERVICE=N");
                        scales.push(s.split('=').next().unwrap_or("").to_string());
                    }
                    _ => {}
                }
                i += 1;
            }
            out.push(DocCommand { source: src.clone(), line: cmd, files, profiles, scales });
        }
    }
    out
}

#[test]
fn documented_commands_name_real_files_services_and_profiles() {
    let cmds = documented_commands();
    assert!(cmds.len() >= 4, "expected the documented compose commands, found {cmds:?}");
    for c in &cmds {
        assert!(!c.files.is_empty(), "{}: `{}` names no -f file (run from the repository root)", c.source, c.line);
        let mut services = BTreeSet::new();
        let mut known_profiles = BTreeSet::new();
        for f in &c.files {
            assert!(
                root().join(f).is_file(),
                "{}: `{}`: no file {f} (paths are from the repository root)",
                c.source,
                c.line
            );
            let doc = load(f);
            for n in service_names(&doc) {
                let p = profiles(svc(&doc, f, &n));
                known_profiles.extend(p.iter().cloned());
                if p.is_empty() || p.iter().any(|x| c.profiles.contains(x)) {
                    services.insert(n);
                }
            }
        }
        for p in &c.profiles {
            assert!(known_profiles.contains(p), "{}: `{}`: no profile {p}", c.source, c.line);
        }
        for s in &c.scales {
            assert!(
                services.contains(s),
                "{}: `{}`: --scale {s}: no such service (with these profiles)",
                c.source,
                c.line
            );
        }
    }
    // The build command of the docs names the real Dockerfile.
    let readme = read("docker-compose/README.md");
    assert!(
        readme.contains("docker build -f docker-compose/Dockerfile"),
        "docker-compose/README.md: image build command"
    );
}

/// The compose tool of this machine: `docker compose`, else `docker-compose`, else Debian's
/// docker-compose installed now; Err says why none could be had.
fn compose_tool() -> Result<Vec<String>, String> {
    let works = |argv: &[&str]| Command::new(argv[0]).args(&argv[1..]).output().is_ok_and(|o| o.status.success());
    if works(&["docker", "compose", "version"]) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if works(&["docker-compose", "version"]) {
        return Ok(vec!["docker-compose".into()]);
    }
    if !works(&["sh", "-c", "[ \"$(id -u)\" = 0 ]"]) {
        return Err("neither `docker compose` nor `docker-compose` is installed, and installing Debian's docker-compose needs root".into());
    }
    println!("compose: installing Debian's docker-compose package");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "docker-compose"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ok && works(&["docker-compose", "version"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        Err("`apt-get install docker-compose` failed (no package registry reachable?)".into())
    }
}

#[test]
fn docker_compose_config_accepts_every_file_and_documented_command() {
    let tool = match compose_tool() {
        Ok(t) => t,
        Err(why) => {
            println!("NOT RUN: `docker compose config` on docker-compose/*.yml: {why}");
            return;
        }
    };
    // (files, profiles) to validate: each file alone, each file with each of its profiles, and
    // each documented command's own.
    let mut runs: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for f in files("docker-compose", ".yml") {
        let doc = load(&f);
        let ps: BTreeSet<String> = service_names(&doc).iter().flat_map(|n| profiles(svc(&doc, &f, n))).collect();
        runs.push((vec![f.clone()], Vec::new()));
        for p in ps {
            runs.push((vec![f.clone()], vec![p]));
        }
    }
    for c in documented_commands() {
        runs.push((c.files, c.profiles));
    }
    runs.sort();
    runs.dedup();
    for (files, profiles) in runs {
        let mut args: Vec<String> = tool[1..].to_vec();
        for f in &files {
            args.extend(["-f".into(), f.clone()]);
        }
        for p in &profiles {
            args.extend(["--profile".into(), p.clone()]);
        }
        args.extend(["config".into(), "-q".into()]);
        let out = Command::new(&tool[0])
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool[0]));
        let shown = format!("{} {}", tool[0], args.join(" "));
        assert!(out.status.success(), "`{shown}` failed:\n{}", String::from_utf8_lossy(&out.stderr));
        println!("RAN: {shown}: ok");
    }
}
