//! The admin client behind `dpskit cloud …`: blocking, one request per connection.
//! Use it from threads (or `spawn_blocking`), not directly inside an async task.

use super::admin::{AdminRequest, AdminResponse, DEFAULT_METHOD_TIMEOUT_SECS};
use super::hub::MethodOutcome;
use super::Stats;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Talks to one emulator's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

/// A failure the emulator reported (as opposed to not reaching it).
#[derive(Debug)]
pub struct ServiceError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (status {})", self.message, self.status)
    }
}

impl std::error::Error for ServiceError {}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        AdminClient {
            socket: socket.to_path_buf(),
        }
    }

    /// The client for the emulator using `state_dir`.
    pub fn for_state_dir(state_dir: &Path) -> Self {
        AdminClient::new(&super::admin_socket_path(state_dir))
    }

    fn open(&self, request: &AdminRequest) -> Result<BufReader<UnixStream>> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| {
            anyhow!(
                "no emulator answers on {} ({e}); start one with `dpskit emulate`, or give the same --state-dir it uses",
                self.socket.display()
            )
        })?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        s.write_all(line.as_bytes())
            .context("admin socket: write failed")?;
        Ok(BufReader::new(s))
    }

    /// Sends one request and returns its `result`; a refusal becomes a [`ServiceError`].
    pub fn request(&self, request: &AdminRequest) -> Result<Value> {
        let mut reader = self.open(request)?;
        if let AdminRequest::Invoke { timeout_secs, .. } = request {
            reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(timeout_secs + 10)))?;
        }
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("admin socket: read failed")?;
        if line.trim().is_empty() {
            bail!("the emulator closed the admin connection without an answer");
        }
        let answer: AdminResponse =
            serde_json::from_str(line.trim()).context("admin socket: not an admin answer")?;
        if !answer.ok {
            return Err(ServiceError {
                status: answer.status.unwrap_or(500),
                message: answer.error.unwrap_or_else(|| "failed".into()),
            }
            .into());
        }
        Ok(answer.result.unwrap_or(Value::Null))
    }

    pub fn status(&self) -> Result<Stats> {
        Ok(serde_json::from_value(
            self.request(&AdminRequest::Status)?,
        )?)
    }

    pub fn devices(&self) -> Result<Value> {
        self.request(&AdminRequest::Devices)
    }

    pub fn send_c2d(
        &self,
        device: &str,
        body: &str,
        properties: &[(String, Option<String>)],
    ) -> Result<Value> {
        self.request(&AdminRequest::SendC2d {
            device: device.into(),
            body: body.into(),
            properties: properties.to_vec(),
        })
    }

    pub fn invoke(
        &self,
        device: &str,
        method: &str,
        payload: Value,
        timeout: Option<Duration>,
    ) -> Result<MethodOutcome> {
        let timeout_secs = timeout.map_or(DEFAULT_METHOD_TIMEOUT_SECS, |t| t.as_secs().max(1));
        let v = self.request(&AdminRequest::Invoke {
            device: device.into(),
            method: method.into(),
            payload,
            timeout_secs,
        })?;
        Ok(serde_json::from_value(v)?)
    }

    pub fn twin(&self, device: &str, desired: Option<Value>) -> Result<Value> {
        self.request(&AdminRequest::Twin {
            device: device.into(),
            desired,
        })
    }

    /// Follows events (telemetry only unless `all`), calling `each` with every JSON line until
    /// it returns false or the emulator stops. `ready` runs once the subscription is active.
    pub fn follow(
        &self,
        all: bool,
        ready: impl FnOnce(),
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let reader = self.open(&AdminRequest::Events { all })?;
        let mut lines = reader.lines();
        match lines.next() {
            Some(Ok(l)) if l.contains("following") => ready(),
            Some(Ok(l)) => bail!("the emulator refused to stream events: {l}"),
            _ => bail!("the emulator closed the event stream"),
        }
        for line in lines {
            let line = line.context("admin socket: read failed")?;
            if !each(&line) {
                break;
            }
        }
        Ok(())
    }
}
