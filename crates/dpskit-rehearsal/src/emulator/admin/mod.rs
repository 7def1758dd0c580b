//! The admin interface: what `dpskit cloud …` (the service side) asks the emulator.
//!
//! One transport on every OS (Windows has no Unix sockets in its tooling): TCP on loopback, on
//! an ephemeral port, with a random token. Both are in `admin.json` in the state directory,
//! written readable by its owner only, so only the user who can read that file controls the
//! emulator; a connection that does not present the token gets a 401 and nothing else.
//!
//! JSON lines: the client writes one [`AdminRequest`] line carrying the token and reads one
//! [`AdminResponse`] line, except `events`, which answers with one JSON line per event until
//! the client hangs up. No HTTP.
//!
//! ```text
//! → {"token":"…","op":"invoke","device":"dev-1","method":"reboot","payload":{"delay":1},"timeout_secs":30}
//! ← {"ok":true,"result":{"status":200,"payload":{"rebooting":true}}}
//! → {"token":"…","op":"send-c2d","device":"dev-1","body":"hello","properties":[["color","red"]]}
//! ← {"ok":false,"status":404,"error":"device \"dev-1\" is not registered; …"}
//! ```

pub mod client;

use super::hub::registry;
use super::Shared;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

/// Why the admin interface could not be set up, or a request not made.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("another emulator is running with admin file {} (the same --state-dir); stop it or use another --state-dir", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on loopback for the admin interface: {0}")]
    Listen(std::io::Error),
    #[error("no randomness for the admin token: {0}")]
    Random(String),
    #[error("cannot write the admin file {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        source: dpskit_factory::files::WriteError,
    },
    #[error("no emulator answers on {} ({detail}); start one with `dpskit emulate`, or give the same --state-dir it uses", path.display())]
    NotRunning { path: PathBuf, detail: String },
    #[error("admin connection: {0}")]
    Connection(String),
    /// A failure the emulator reported (as opposed to not reaching it).
    #[error("{message} (status {status})")]
    Service { status: u16, message: String },
}

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1024 * 1024;
/// Default wait for a direct-method answer (IoT Hub's default response timeout).
pub const DEFAULT_METHOD_TIMEOUT_SECS: u64 = 30;

fn default_timeout() -> u64 {
    DEFAULT_METHOD_TIMEOUT_SECS
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Counters: connections, registrations, telemetry, rejections.
    Status,
    /// Every registered device with its connection state.
    Devices,
    /// Follow the event stream; only telemetry unless `all`.
    Events {
        #[serde(default)]
        all: bool,
    },
    /// Queue a cloud-to-device message (UTF-8 body; a property value `null` is a bare key).
    SendC2d {
        device: String,
        /// The device's hub, when two hubs have a device with this ID.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hub: Option<String>,
        body: String,
        #[serde(default)]
        properties: Vec<(String, Option<String>)>,
    },
    /// Call a direct method and wait for the answer.
    Invoke {
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hub: Option<String>,
        method: String,
        #[serde(default)]
        payload: Value,
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// Read the twin, after merging `desired` into the desired properties if given.
    Twin {
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hub: Option<String>,
        #[serde(default)]
        desired: Option<Value>,
    },
}

/// One admin answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    /// IoT Hub's HTTP-like status for a failure (404 unknown device, 504 no answer, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl AdminResponse {
    fn ok(result: Value) -> Self {
        AdminResponse {
            ok: true,
            status: None,
            error: None,
            result: Some(result),
        }
    }

    fn err(status: u16, error: impl Into<String>) -> Self {
        AdminResponse {
            ok: false,
            status: Some(status),
            error: Some(error.into()),
            result: None,
        }
    }
}

/// Where a running emulator's admin interface is and the token it wants: the content of
/// `admin.json` in its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEndpoint {
    pub address: SocketAddr,
    pub token: String,
}

/// A request as it travels: the token, then the request's own fields.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<R> {
    pub token: String,
    #[serde(flatten)]
    pub request: R,
}

impl AdminEndpoint {
    /// Reads `admin.json`.
    pub fn read(path: &Path) -> Result<AdminEndpoint, AdminError> {
        let not_running = |detail: String| AdminError::NotRunning {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| not_running(e.to_string()))?;
        serde_json::from_str(&text).map_err(|_| not_running("not an emulator admin file".into()))
    }
}

/// Binds the admin listener on loopback and writes `admin.json` (owner-only), refusing to take
/// over the file of an emulator that still answers on it.
pub(crate) async fn bind(path: &Path) -> Result<(TcpListener, AdminEndpoint), AdminError> {
    if let Ok(old) = AdminEndpoint::read(path) {
        let probe = client::AdminClient::from_endpoint(old);
        let alive = tokio::task::spawn_blocking(move || probe.status().is_ok())
            .await
            .unwrap_or(false);
        if alive {
            return Err(AdminError::AlreadyRunning(path.to_path_buf()));
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(AdminError::Listen)?;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| AdminError::Random(e.to_string()))?;
    let endpoint = AdminEndpoint {
        address: listener.local_addr().map_err(AdminError::Listen)?,
        token: hex::encode(secret),
    };
    let text = serde_json::to_string_pretty(&endpoint).unwrap_or_default() + "\n";
    dpskit_factory::files::write_private_file(path, text.as_bytes()).map_err(|source| {
        AdminError::WriteFile {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok((listener, endpoint))
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Serves admin clients until `stop` turns true.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    token: String,
    mut stop: watch::Receiver<bool>,
) {
    let token: Arc<str> = token.into();
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    clients.spawn(client(shared.clone(), stream, token.clone()));
                }
            }
        }
    }
    clients.shutdown().await;
}

async fn client(shared: Arc<Shared>, stream: TcpStream, token: Arc<str>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let request: AdminRequest = match serde_json::from_str::<Envelope<AdminRequest>>(line.trim()) {
        Ok(r) if same_token(&r.token, &token) => r.request,
        Ok(_) => {
            let answer = AdminResponse::err(
                401,
                "wrong admin token; dpskit cloud reads it from admin.json in the emulator's state directory",
            );
            let _ = write_line(
                &mut write,
                &serde_json::to_string(&answer).unwrap_or_default(),
            )
            .await;
            return;
        }
        Err(e) => {
            let answer = AdminResponse::err(400, format!("not an admin request ({e}); send one JSON object per line, e.g. {{\"token\":\"…\",\"op\":\"devices\"}}"));
            let _ = write_line(
                &mut write,
                &serde_json::to_string(&answer).unwrap_or_default(),
            )
            .await;
            return;
        }
    };
    let answer = match request {
        AdminRequest::Events { all } => {
            follow(&shared, all, reader, write).await;
            return;
        }
        AdminRequest::Status => {
            AdminResponse::ok(serde_json::to_value(shared.stats()).unwrap_or_default())
        }
        AdminRequest::Devices => AdminResponse::ok(registry::list_devices(&shared)),
        AdminRequest::SendC2d {
            device,
            hub,
            body,
            properties,
        } => respond(registry::send_c2d(
            &shared,
            hub.as_deref(),
            &device,
            body.into_bytes(),
            properties,
        )),
        AdminRequest::Invoke {
            device,
            hub,
            method,
            payload,
            timeout_secs,
        } => {
            let timeout = Duration::from_secs(timeout_secs.clamp(1, 300));
            respond(
                registry::invoke(&shared, hub.as_deref(), &device, &method, &payload, timeout)
                    .await
                    .map(|o| json!(o)),
            )
        }
        AdminRequest::Twin {
            device,
            hub,
            desired,
        } => respond(registry::twin(
            &shared,
            hub.as_deref(),
            &device,
            desired.as_ref(),
        )),
    };
    let _ = write_line(
        &mut write,
        &serde_json::to_string(&answer).unwrap_or_default(),
    )
    .await;
}

fn respond(r: Result<Value, registry::ServiceFailure>) -> AdminResponse {
    match r {
        Ok(v) => AdminResponse::ok(v),
        Err(f) => AdminResponse::err(f.status, f.message),
    }
}

/// Streams events until the client hangs up.
async fn follow<R: tokio::io::AsyncRead + Unpin>(
    shared: &Shared,
    all: bool,
    mut reader: R,
    mut write: OwnedWriteHalf,
) {
    let mut events = shared.journal.subscribe();
    let mut sink = [0u8; 64];
    // Tell the client it is subscribed: nothing published after this line is missed.
    if write_line(&mut write, r#"{"kind":"following"}"#)
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            n = reader.read(&mut sink) => {
                if n.unwrap_or(0) == 0 {
                    return;
                }
            }
            e = events.recv() => {
                let line = match e {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        std::sync::Arc::from(json!({ "kind": "lagged", "missed": n, "message": format!("this follower fell behind and missed {n} events") }).to_string().as_str())
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !all && !line.contains(r#""kind":"telemetry""#) && !line.contains(r#""kind":"lagged""#) {
                    continue;
                }
                if write_line(&mut write, &line).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_line(w: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.flush().await
}
