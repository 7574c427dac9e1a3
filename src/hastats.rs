//! Control plane: the `/hastats` views (HTML page, haproxy CSV, JSON). Minimal for now; the ops issue completes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::state::Gateway;

fn node_rows(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.all_nodes()
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "address": b.addr_str,
                "up": b.health.is_up(),
                "admin": b.admin().as_str(),
                "active": b.active(),
                "sessions_total": b.counters.sessions_total.load(Ordering::Relaxed),
                "tunnels": b.counters.tunnels.load(Ordering::Relaxed),
            })
        })
        .collect()
}

pub fn html(gw: &Arc<Gateway>) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kuzzle-gateway stats</title></head><body><table>",
    );
    for r in node_rows(gw) {
        s.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", r["name"], r["up"]));
    }
    s.push_str("</table></body></html>");
    s
}

pub fn csv(gw: &Arc<Gateway>) -> String {
    let mut s = String::from("# pxname,svname,scur,stot,status\n");
    for b in gw.all_nodes() {
        let st = if b.health.is_up() { "UP" } else { "DOWN" };
        s.push_str(&format!(
            "kuzzle,{},{},{},{}\n",
            b.name,
            b.active(),
            b.counters.sessions_total.load(Ordering::Relaxed),
            st
        ));
    }
    s
}

pub fn json(gw: &Arc<Gateway>) -> String {
    serde_json::json!({ "nodes": node_rows(gw) }).to_string()
}
