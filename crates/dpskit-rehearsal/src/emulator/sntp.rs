//! SNTP on UDP, so a device's whole environment is one command: the emulator answers time
//! requests with its own clock (`dpskit_core::sntp::answer`), the clock its token checks use,
//! so a board set from here agrees with the services about expiry.

use super::clock::SharedClock;
use super::journal::Journal;
use serde_json::json;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Answers every SNTP client request on `socket` until `stop` turns true.
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    clock: SharedClock,
    journal: Journal,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = [0u8; 512];
    let mut ignored = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                match dpskit_core::sntp::answer(&buf[..n], clock.now_unix_us()) {
                    Some(reply) => {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    None => {
                        ignored += 1;
                        // Say it once, then every thousandth time: a flood must not flood the log.
                        if ignored == 1 || ignored.is_multiple_of(1000) {
                            journal.note("warning", &from.to_string(), &format!("not an SNTP client request ({n} bytes); not answered ({ignored} so far)"), json!({ "peer": from.to_string() }));
                        }
                    }
                }
            }
        }
    }
}
