//! The admin client behind `dpskit cloud …`: blocking, one request per connection, to the
//! address and with the token in the emulator's `admin.json`.
//! Use it from threads (or `spawn_blocking`), not directly inside an async task.

use super::{
    AdminEndpoint, AdminError, AdminRequest, AdminResponse, Envelope, DEFAULT_METHOD_TIMEOUT_SECS,
};
use crate::emulator::hub::MethodOutcome;
use crate::emulator::Stats;
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

type Result<T> = std::result::Result<T, AdminError>;

fn connection(what: &str) -> impl Fn(std::io::Error) -> AdminError + '_ {
    move |e| AdminError::Connection(format!("{what} failed: {e}"))
}

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
        AdminClient::new(&crate::emulator::admin_file_path(state_dir))
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
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => AdminEndpoint::read(&self.file)?,
        };
        let mut s = TcpStream::connect(endpoint.address).map_err(|e| AdminError::NotRunning {
            path: self.file.clone(),
            detail: e.to_string(),
        })?;
        let mut line = serde_json::to_string(&Envelope {
            token: endpoint.token,
            request,
        })
        .unwrap_or_default();
        line.push('\n');
        s.write_all(line.as_bytes()).map_err(connection("write"))?;
        Ok(BufReader::new(s))
    }

    /// Sends one request and returns its `result`; a refusal becomes
    /// [`AdminError::Service`].
    pub fn request(&self, request: &AdminRequest) -> Result<Value> {
        let mut reader = self.open(request)?;
        if let AdminRequest::Invoke { timeout_secs, .. } = request {
            reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(timeout_secs.saturating_add(10))))
                .map_err(connection("setting the read timeout"))?;
        }
        let mut line = String::new();
        reader.read_line(&mut line).map_err(connection("read"))?;
        if line.trim().is_empty() {
            return Err(AdminError::Connection(
                "the emulator closed the admin connection without an answer".into(),
            ));
        }
        let answer: AdminResponse = serde_json::from_str(line.trim())
            .map_err(|_| AdminError::Connection("not an admin answer".into()))?;
        if !answer.ok {
            return Err(AdminError::Service {
                status: answer.status.unwrap_or(500),
                message: answer.error.unwrap_or_else(|| "failed".into()),
            });
        }
        Ok(answer.result.unwrap_or(Value::Null))
    }

    pub fn status(&self) -> Result<Stats> {
        serde_json::from_value(self.request(&AdminRequest::Status)?)
            .map_err(|_| AdminError::Connection("not a status answer".into()))
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
        self.send_c2d_in(None, device, body, properties)
    }

    /// [`send_c2d`](Self::send_c2d) to the device of hub `hub`, when two hubs have one with
    /// this ID.
    pub fn send_c2d_in(
        &self,
        hub: Option<&str>,
        device: &str,
        body: &str,
        properties: &[(String, Option<String>)],
    ) -> Result<Value> {
        self.request(&AdminRequest::SendC2d {
            device: device.into(),
            hub: hub.map(Into::into),
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
        self.invoke_in(None, device, method, payload, timeout)
    }

    /// [`invoke`](Self::invoke) on the device of hub `hub`.
    pub fn invoke_in(
        &self,
        hub: Option<&str>,
        device: &str,
        method: &str,
        payload: Value,
        timeout: Option<Duration>,
    ) -> Result<MethodOutcome> {
        let timeout_secs = timeout.map_or(DEFAULT_METHOD_TIMEOUT_SECS, |t| t.as_secs().max(1));
        let v = self.request(&AdminRequest::Invoke {
            device: device.into(),
            hub: hub.map(Into::into),
            method: method.into(),
            payload,
            timeout_secs,
        })?;
        serde_json::from_value(v).map_err(|_| AdminError::Connection("not a method answer".into()))
    }

    pub fn twin(&self, device: &str, desired: Option<Value>) -> Result<Value> {
        self.twin_in(None, device, desired)
    }

    /// [`twin`](Self::twin) of the device of hub `hub`.
    pub fn twin_in(
        &self,
        hub: Option<&str>,
        device: &str,
        desired: Option<Value>,
    ) -> Result<Value> {
        self.request(&AdminRequest::Twin {
            device: device.into(),
            hub: hub.map(Into::into),
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
            Some(Ok(l)) => {
                return Err(AdminError::Connection(format!(
                    "the emulator refused to stream events: {l}"
                )))
            }
            _ => {
                return Err(AdminError::Connection(
                    "the emulator closed the event stream".into(),
                ))
            }
        }
        for line in lines {
            let line = line.map_err(connection("read"))?;
            if !each(&line) {
                break;
            }
        }
        Ok(())
    }
}
