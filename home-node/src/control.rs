//! The running node's control socket, `DATA_DIR/control.sock` (mode 0600, so
//! only the node's own user reaches it): operator commands that need the live
//! tunnel, such as publishing an ACME DNS-01 challenge through the relay.
//!
//! One JSON request per line, one JSON answer per line:
//! `{"publish": "acme_challenge", "values": ["…"]}` → `{"ok": true}` or
//! `{"error": "…"}`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use omb_shared::protocol::PublishKind;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// How long a request waits for the relay's answer (the tunnel may be down).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest request line read.
const MAX_REQUEST: usize = 64 * 1024;

/// The control socket's path in a node's data folder.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// A request the tunnel session carries out.
#[derive(Debug)]
pub struct Publish {
    pub kind: PublishKind,
    pub values: Vec<String>,
    /// The relay's answer: `Ok` once its DNS serves the records.
    pub reply: oneshot::Sender<Result<(), String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub publish: PublishKind,
    pub values: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Serves the control socket until the task is dropped.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Publish>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, requests.clone()));
            }
            Err(error) => {
                warn!(%error, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds the control socket (replacing a stale one), readable by the owner only.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Publish>) {
    let (read, mut write) = stream.into_split();
    let limited = tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64);
    let mut lines = BufReader::new(limited).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request, &requests).await,
            Err(e) => Err(format!("not a control request: {e}")),
        };
        let answer = match answer {
            Ok(()) => Answer {
                ok: true,
                error: None,
            },
            Err(error) => Answer {
                ok: false,
                error: Some(error),
            },
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
    debug!("control connection closed");
}

async fn handle(request: Request, requests: &mpsc::Sender<Publish>) -> Result<(), String> {
    request.publish.check(&request.values)?;
    let (reply, answer) = oneshot::channel();
    requests
        .send(Publish {
            kind: request.publish,
            values: request.values,
            reply,
        })
        .await
        .map_err(|_| "the node is shutting down".to_string())?;
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the tunnel to the relay closed; try again".to_string()),
        Err(_) => Err("no answer from the relay (is the tunnel up?); try again".to_string()),
    }
}

/// The client side, for the operator CLI: sends one request to the running
/// node and returns its answer.
pub async fn request(data_dir: &Path, request: &Request) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the running node at {} (is `omb-node run` running?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines
        .next_line()
        .await?
        .context("the node closed the control connection")?;
    let answer: Answer = serde_json::from_str(&answer)?;
    match answer.error {
        Some(error) => anyhow::bail!("{error}"),
        None => Ok(()),
    }
}
