//! CONNECT: who a connection is. The user name tells DPS from IoT Hub; the client ID, the
//! registration ID rules and the SAS token (checked by [`enrollment::validate`]) decide
//! whether it gets in. A refusal is a CONNACK return code and a reason in plain words.
//!
//! [`enrollment::validate`]: crate::emulator::enrollment::validate

use crate::emulator::clock::now_secs;
use crate::emulator::dps::DpsSession;
use crate::emulator::enrollment::{validate, Rejection};
use crate::emulator::hub::registry::{self, DeviceAddr, HubConnect, ToConn};
use crate::emulator::hub::{self, Will};
use crate::emulator::subscriptions::Subscriptions;
use crate::emulator::Shared;
use dpskit_core::mqtt::Username;
use dpskit_core::RegistrationId;
use dpskit_factory::keys::token::Audience;
use rumqttc::mqttbytes::v4::Connect;
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

/// Who a session is.
pub(crate) enum Identity {
    Dps(DpsSession),
    Hub {
        addr: DeviceAddr,
        clean: bool,
        conn_id: u64,
        will: Option<Will>,
    },
}

impl Identity {
    /// True for a DPS session whose credentials failed: it is answered with the reason for a
    /// short while, then it ends.
    pub fn refused(&self) -> bool {
        matches!(self, Identity::Dps(s) if s.auth.is_err())
    }
}

/// A CONNECT that got in.
pub(crate) struct Login {
    pub identity: Identity,
    pub who: String,
    pub session_present: bool,
    pub subs: Subscriptions,
    /// The token's `se` (Unix seconds) for an authenticated session: it ends then.
    pub expiry: Option<u64>,
}

/// A CONNECT that did not: the CONNACK return code, the reason, and who it was.
pub(crate) struct Refusal {
    pub code: u8,
    pub reason: String,
    pub who: String,
}

/// The CONNACK code for a DPS refusal at CONNECT time: 2 for an ID DPS would not accept,
/// 5 for credentials.
fn dps_code(r: &Rejection) -> u8 {
    if r.status == 400 {
        2
    } else {
        5
    }
}

/// Decides a CONNECT. For the hub this makes the connection the device's only one.
pub(crate) fn login(
    shared: &Shared,
    connect: &Connect,
    conn_id: u64,
    peer: &str,
    tx: mpsc::Sender<ToConn>,
    kick: oneshot::Sender<String>,
) -> Result<Login, Refusal> {
    let refuse = |code: u8, reason: String, who: &str| Refusal {
        code,
        reason,
        who: who.to_string(),
    };
    let Some(login) = &connect.login else {
        return Err(refuse(5, "CONNECT without user name and password; DPS and IoT Hub need the user name and a SAS token as password".into(), peer));
    };
    let (username, password) = (login.username.as_str(), login.password.as_str());
    let parsed = Username::parse(username);
    let who = match &parsed {
        Some(Username::Dps {
            registration_id, ..
        }) => format!("{registration_id} (DPS)"),
        Some(Username::Hub { device_id, .. }) => format!("{device_id} (hub)"),
        None => peer.to_string(),
    };
    if password.is_empty() {
        return Err(refuse(5, "no password: X.509 (client certificate) authentication is not emulated; dpskit emulate checks symmetric-key SAS tokens only, so connect with the SAS token as password".into(), &who));
    }
    match parsed {
        None => Err(refuse(4, format!("user name {username:?} is neither a DPS user name ({{scope}}/registrations/{{id}}/api-version=…) nor an IoT Hub one ({{hub}}/{{device}}/?api-version=…)"), &who)),
        Some(Username::Dps { id_scope, registration_id, .. }) => {
            if connect.client_id != registration_id {
                return Err(refuse(2, format!("client ID {:?} differs from the registration ID {registration_id:?} in the user name; DPS wants them equal", connect.client_id), &who));
            }
            let now = now_secs(shared.clock.as_ref());
            let mut expiry = None;
            let auth = match (
                RegistrationId::parse(&registration_id, true),
                shared.enrollments.by_scope(&id_scope),
            ) {
                (Err(e), _) => Err(Rejection::bad_request(format!("{e}; DPS refuses such a registration ID"))),
                (Ok(_), None) => Err(Rejection::unauthorized(format!(
                    "unknown ID scope {id_scope:?}; this emulator serves {}; copy the scope from the DPS you rehearse against (dpskit emulate --scope)",
                    shared.enrollments.scope_list()
                ))),
                (Ok(_), Some(g)) => {
                    let audience = Audience::Dps { id_scope: id_scope.clone(), registration_id: registration_id.clone() };
                    validate(g, &audience, password, now).map(|ok| {
                        for w in &ok.warnings {
                            shared.journal.note("warning", &who, w, json!({ "registrationId": registration_id }));
                        }
                        expiry = Some(ok.expiry);
                        g.clone()
                    })
                }
            };
            if let Err(r) = &auth {
                if shared.dps_settings.reject_at_connect {
                    return Err(refuse(dps_code(r), r.reason.clone(), &who));
                }
                shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                shared.journal.note("rejected", &who, &format!("DPS credentials refused (requests are answered with {} and the reason): {}", r.status, r.reason), json!({ "registrationId": registration_id, "status": r.status }));
            }
            Ok(Login {
                identity: Identity::Dps(DpsSession { id_scope, registration_id, auth }),
                who,
                session_present: false,
                subs: Subscriptions::default(),
                expiry,
            })
        }
        Some(Username::Hub { host, device_id, .. }) => {
            if connect.client_id != device_id {
                return Err(refuse(2, format!("client ID {:?} differs from the device ID {device_id:?} in the user name; IoT Hub wants them equal", connect.client_id), &who));
            }
            let will = connect.last_will.as_ref().and_then(|w| {
                hub::will(&device_id, &w.topic, &w.message, w.retain)
                    .map_err(|why| shared.journal.note("warning", &who, &why, json!({ "device": device_id })))
                    .ok()
            });
            let login = registry::connect(shared, HubConnect {
                conn_id,
                host: &host,
                device_id: &device_id,
                password,
                clean_session: connect.clean_session,
                tx,
                kick,
            })
            .map_err(|(code, r)| refuse(code, r.reason, &who))?;
            for w in &login.warnings {
                shared.journal.note("warning", &who, w, json!({ "device": device_id }));
            }
            Ok(Login {
                identity: Identity::Hub {
                    addr: DeviceAddr::new(&host, &device_id),
                    clean: connect.clean_session,
                    conn_id,
                    will,
                },
                who,
                session_present: login.session_present,
                subs: login.subs,
                expiry: Some(login.expiry),
            })
        }
    }
}
