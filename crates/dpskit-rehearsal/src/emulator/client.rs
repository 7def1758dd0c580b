//! The admin client behind `dpskit cloud …`: blocking, one request per connection, to the
//! address and with the token in the emulator's `admin.json`.
//! Use it from threads (or `spawn_blocking`), not directly inside an async task.

use super::admin::{
    AdminEndpoint, AdminRequest, AdminResponse, Envelope, DEFAULT_METHOD_TIMEOUT_SECS,
};
use super::hub::MethodOutcome;
use super::Stats;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Talks to one emulator's admin interface, found through its `admin.json`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    file: PathBuf,
    /// Known up front (in-process handles); otherwise read from `file` per request, so a
    /// restarted emulator is found again.
    endpoint: Option<AdminEndpoint>,
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
    /// The client for the emulator whose admin file is `file`.
    pub fn new(file: &Path) -> Self {
        AdminClient {
            file: file.to_path_buf(),
            endpoint: None,
        }
    }

    /// The client for the emulator using `state_dir`.
    pub fn for_state_dir(state_dir: &Path) -> Self {
        AdminClient::new(&super::admin_file_path(state_dir))
    }

    pub(crate) fn from_endpoint(endpoint: AdminEndpoint) -> Self {
        AdminClient {
            file: PathBuf::new(),
            endpoint: Some(endpoint),
        }
    }

    pub(crate) fn with_endpoint(file: &Path, endpoint: AdminEndpoint) -> Self {
        AdminClient {
            file: file.to_path_buf(),
            endpoint: Some(endpoint),
        }
    }

    fn open(&self, request: &AdminRequest) -> Result<BufReader<TcpStream>> {
        let not_running = |e: &dyn std::fmt::Display| {
            anyhow!(
                "no emulator answers on {} ({e}); start one with `dpskit emulate`, or give the same --state-dir it uses",
                self.file.display()
            )
        };
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => AdminEndpoint::read(&self.file).map_err(|e| not_running(&e))?,
        };
        let mut s = TcpStream::connect(endpoint.address).map_err(|e| not_running(&e))?;
        let mut line = serde_json::to_string(&Envelope {
            token: endpoint.token,
            request,
        })?;
        line.push('\n');
        s.write_all(line.as_bytes())
            .context("admin connection: write failed")?;
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
            .context("admin connection: read failed")?;
        if line.trim().is_empty() {
            bail!("the emulator closed the admin connection without an answer");
        }
        let answer: AdminResponse =
            serde_json::from_str(line.trim()).context("admin connection: not an admin answer")?;
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
            let line = line.context("admin connection: read failed")?;
            if !each(&line) {
                break;
            }
        }
        Ok(())
    }
}
