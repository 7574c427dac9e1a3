//! A tiny WebSocket client for trying the gateway by hand (the demo prints it): sends one Kuzzle
//! request, prints every message until the answer to it, then exits.
//!
//! ```text
//! cargo run --release --example ws_call -- ws://127.0.0.1:7512/ '{"controller":"server","action":"now"}'
//! ```
//! A `requestId` is added when the request has none. Exits 1 when no answer came within 10 s.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(body)) = (args.next(), args.next()) else {
        eprintln!("usage: ws_call URL JSON   e.g. ws_call ws://127.0.0.1:7512/ '{{\"controller\":\"server\",\"action\":\"now\"}}'");
        return std::process::ExitCode::from(2);
    };
    let mut req: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ws_call: the request is not JSON: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if req.get("requestId").is_none() {
        req["requestId"] = serde_json::json!("ws_call-1");
    }
    let id = req["requestId"].clone();
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ws_call: cannot connect to {url}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = ws.send(Message::text(req.to_string())).await {
        eprintln!("ws_call: send failed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                println!("{t}");
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v.get("requestId") == Some(&id) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = ws.close(None).await;
    if answered {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("ws_call: no answer to {id} within 10 s");
        std::process::ExitCode::FAILURE
    }
}
