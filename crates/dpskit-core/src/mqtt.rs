//! What the DPS and IoT Hub state machines exchange with the MQTT driver that runs them.
//!
//! The machines are sans-IO: the driver feeds [`Event`]s (with the current time) and carries
//! out the [`Action`]s that come back. Both machines use the same two types so one driver
//! loop serves both.
//!
//! **Time**: every `now_ms` is Unix time in milliseconds, read *after* SNTP has set the clock.
//! One unit for everything, because SAS expiry is wall-clock time anyway.
//!
//! Also here: the CONNECT usernames of both services, built and parsed in one place, so the
//! emulator tells DPS from Hub connections with the same code the device uses to make them.

use crate::url;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// The TLS port DPS and IoT Hub listen on (the Python SDK cannot use any other).
pub const MQTT_TLS_PORT: u16 = 8883;
/// Longest keep-alive IoT Hub honours: its timeout is 1.5 × keep-alive, capped at 1767 s.
pub const MAX_KEEP_ALIVE_SECS: u16 = 1177;
/// What this client reports as `ClientVersion` / `DeviceClientType` (URL-encoded on the wire).
pub const CLIENT_VERSION: &str = concat!("dpskit/", env!("CARGO_PKG_VERSION"));
/// The DPS MQTT api-version every SDK uses.
pub const DPS_API_VERSION: &str = "2019-03-31";
/// The IoT Hub api-version the hub MQTT docs recommend.
pub const HUB_API_VERSION: &str = "2021-04-12";

/// MQTT delivery guarantee. There is no QoS 2: IoT Hub closes the connection on a QoS 2
/// PUBLISH, so the type makes it impossible to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// Everything the driver needs for one MQTT 3.1.1 CONNECT over TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// TLS server name and TCP host.
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: String,
    /// The SAS token text; a credential, so `Debug` hides it.
    pub password: String,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    /// Unix seconds at which `password` stops working.
    pub token_expiry: u64,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<SAS token, redacted>")
            .field("clean_session", &self.clean_session)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("token_expiry", &self.token_expiry)
            .finish()
    }
}

/// One PUBLISH. Never retained: IoT Hub does not keep retained messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
}

impl Publish {
    pub fn qos1(topic: String, payload: Vec<u8>) -> Self {
        Publish {
            topic,
            payload,
            qos: QoS::AtLeastOnce,
        }
    }
}

/// What the driver reports to a state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Begin: the machine answers with [`Action::Connect`].
    Start,
    /// The CONNACK of the connection opened for the last `Connect`/`Reconnect`.
    ConnAck {
        return_code: u8,
        session_present: bool,
    },
    /// The SUBACK of the last `Subscribe` (`granted == false` for return code 0x80).
    SubAck { granted: bool },
    /// An incoming PUBLISH.
    Publish { topic: &'a str, payload: &'a [u8] },
    /// The oldest `Publish` not yet acknowledged was delivered (its PUBACK arrived; for QoS 0,
    /// it was written). Publishes are acknowledged in the order they were asked for.
    PubAck,
    /// The connection went down (or never came up: TCP, TLS and CONNACK timeouts are the
    /// driver's, and after a refused CONNACK the server closes the socket). Not reported for
    /// closes the machine asked for. `random` is any random `u32`; it jitters the backoff.
    Disconnected { random: u32 },
    /// Time passed; call at [`next_deadline`](crate::dps::DpsClient::next_deadline) or sooner.
    Tick,
}

/// What a state machine asks the driver to do, in order. `O` is the machine's own output.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<O> {
    /// Open a connection (TLS to `host:port`, then MQTT CONNECT).
    Connect(ConnectParams),
    /// Close the current connection and open a new one with these parameters (token renewal).
    /// Do not report the close as `Disconnected`.
    Reconnect(ConnectParams),
    Subscribe {
        filter: String,
        qos: QoS,
    },
    Publish(Publish),
    /// Close the connection; the machine is finished with it.
    Disconnect,
    /// A result for the application.
    Output(O),
}

/// A setting the machines cannot work with; `Display` names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

pub(crate) fn check_keep_alive(secs: u16) -> Result<(), SetupError> {
    if secs == 0 || secs > MAX_KEEP_ALIVE_SECS {
        return Err(SetupError {
            field: "keep-alive",
            reason: format!(
                "{secs} s; use 1 to {MAX_KEEP_ALIVE_SECS} s (IoT Hub drops clients above that)"
            ),
        });
    }
    Ok(())
}

/// Plain words for an MQTT 3.1.1 CONNACK return code.
pub fn connack_text(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version (the server wants MQTT 3.1.1)",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password (malformed)",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// Why DPS or the hub usually answers "not authorized"; shared by CONNACK 5 and DPS 401.
pub const UNAUTHORIZED_HINT: &str = "usually the enrollment group key was put on the device instead of the device key derived from it (run `dpskit derive`); otherwise the SAS token is wrong or expired, often because the device clock is not set (SNTP must finish before connecting), or the ID scope / registration ID does not match the enrollment";

/// The DPS CONNECT username: `{scope}/registrations/{id}/api-version=2019-03-31&ClientVersion=…`
/// (no `?`, unlike the hub's).
pub fn dps_username(id_scope: &str, registration_id: &str) -> String {
    format!(
        "{id_scope}/registrations/{registration_id}/api-version={DPS_API_VERSION}&ClientVersion={}",
        url::encode(CLIENT_VERSION)
    )
}

/// The IoT Hub CONNECT username: `{hub}/{device}/?api-version=2021-04-12&DeviceClientType=…`.
/// Host and device ID are not encoded (as every SDK sends them); query values are.
pub fn hub_username(hub_host: &str, device_id: &str) -> String {
    format!(
        "{hub_host}/{device_id}/?api-version={HUB_API_VERSION}&DeviceClientType={}",
        url::encode(CLIENT_VERSION)
    )
}

/// A CONNECT username taken apart; lets one listener serve DPS and Hub clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Username {
    Dps {
        id_scope: String,
        registration_id: String,
        /// `api-version` and the rest (`ClientVersion`, …), decoded, in order.
        params: Vec<(String, String)>,
    },
    Hub {
        host: String,
        device_id: String,
        params: Vec<(String, String)>,
    },
}

impl Username {
    /// Parses what real clients send: ours, the Python SDK's and the C SDKs'.
    /// `None` when it is neither form (an emulator answers CONNACK 4 or 5).
    pub fn parse(username: &str) -> Option<Self> {
        Self::parse_dps(username).or_else(|| Self::parse_hub(username))
    }

    /// `{scope}/registrations/{id}/api-version=…&…` (the registration ID cannot contain '/').
    fn parse_dps(username: &str) -> Option<Self> {
        let (scope, rest) = username.split_once("/registrations/")?;
        let (id, query) = rest.split_once('/').unwrap_or((rest, ""));
        if scope.is_empty() || scope.contains('/') || id.is_empty() || id.starts_with('?') {
            return None;
        }
        let query = query.strip_prefix('?').unwrap_or(query);
        Some(Username::Dps {
            id_scope: scope.to_string(),
            registration_id: id.to_string(),
            params: parse_params(query)?,
        })
    }

    /// `{host}/{device}/?api-version=…&…`.
    fn parse_hub(username: &str) -> Option<Self> {
        let (host, rest) = username.split_once('/')?;
        let (device, query) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || device.is_empty() || query.contains('/') {
            return None;
        }
        let query = query.strip_prefix('?').unwrap_or(query);
        Some(Username::Hub {
            host: host.to_string(),
            device_id: device.to_string(),
            params: parse_params(query)?,
        })
    }

    /// The `api-version` the client asked for, if any.
    pub fn api_version(&self) -> Option<&str> {
        let params = match self {
            Username::Dps { params, .. } | Username::Hub { params, .. } => params,
        };
        params
            .iter()
            .find(|(k, _)| k == "api-version")
            .map(|(_, v)| v.as_str())
    }
}

fn parse_params(query: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((
            crate::topic::decode_component(k)?,
            crate::topic::decode_component(v)?,
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_round_trip() {
        let u = dps_username("0ne00000000", "dev-1");
        assert!(u.starts_with(
            "0ne00000000/registrations/dev-1/api-version=2019-03-31&ClientVersion=dpskit%2F"
        ));
        let p = Username::parse(&u).unwrap();
        assert!(
            matches!(&p, Username::Dps { id_scope, registration_id, .. } if id_scope == "0ne00000000" && registration_id == "dev-1")
        );
        assert_eq!(p.api_version(), Some(DPS_API_VERSION));
        let h = hub_username("myhub.azure-devices.net", "dev-1");
        assert!(h.starts_with(
            "myhub.azure-devices.net/dev-1/?api-version=2021-04-12&DeviceClientType=dpskit%2F"
        ));
        let p = Username::parse(&h).unwrap();
        assert!(
            matches!(&p, Username::Hub { host, device_id, .. } if host == "myhub.azure-devices.net" && device_id == "dev-1")
        );
        assert_eq!(p.api_version(), Some(HUB_API_VERSION));
        assert_eq!(Username::parse("nonsense"), None);
        // A hub device that happens to be called "registrations" is still a hub client.
        let odd = Username::parse("localhost/registrations/?api-version=2021-04-12").unwrap();
        assert!(matches!(odd, Username::Hub { device_id, .. } if device_id == "registrations"));
        assert_eq!(Username::parse("a/b/c/d"), None);
    }

    #[test]
    fn connect_params_debug_hides_the_token() {
        let c = ConnectParams {
            host: "h".into(),
            port: MQTT_TLS_PORT,
            client_id: "d".into(),
            username: "u".into(),
            password: "SharedAccessSignature sr=x&sig=SECRET&se=1".into(),
            clean_session: true,
            keep_alive_secs: 60,
            token_expiry: 1,
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
