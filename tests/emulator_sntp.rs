//! `dpskit emulate --sntp` and `EmulatorConfig::sntp`: the emulator answers SNTP with its own
//! clock, checked with a real SNTP client — sntpc, the crate the firmware uses — on loopback.

mod emulator_support;

use dpskit_rehearsal::emulator::ManualClock;
use emulator_support::*;
use sntpc::{NtpContext, NtpResult, StdTimestampGen};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// A tokio UDP socket as sntpc's socket.
struct Udp(UdpSocket);

impl sntpc::NtpUdpSocket for Udp {
    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> sntpc::Result<usize> {
        self.0
            .send_to(buf, addr)
            .await
            .map_err(|_| sntpc::Error::Network)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.0
            .recv_from(buf)
            .await
            .map_err(|_| sntpc::Error::Network)
    }
}

async fn ask(server: SocketAddr) -> NtpResult {
    let socket = Udp(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    tokio::time::timeout(
        WAIT,
        sntpc::get_time(server, &socket, NtpContext::new(StdTimestampGen::default())),
    )
    .await
    .expect("an SNTP answer")
    .expect("a valid SNTP answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sntp_answers_come_from_the_emulators_clock() {
    // 2030-01-01T00:00:00.25Z: years away from the PC's clock, so the answer can only be
    // the emulator's.
    let clock = ManualClock::at(1_893_456_000_250_000);
    let emu = Emu::start_with(|c| {
        c.clock = clock.clone();
        c.sntp = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let events = emu.record_events();
    let server = emu.handle.sntp_addr().expect("SNTP was asked for");
    let t = ask(server).await;
    assert_eq!(t.sec(), 1_893_456_000);
    let micros = sntpc::fraction_to_microseconds(t.sec_fraction());
    assert!((249_000..=251_000).contains(&micros), "{micros} µs");
    assert!(t.offset() > 0, "the PC is behind 2030: {}", t.offset());
    // The clock moves, the answers follow.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(ask(server).await.sec(), 1_893_459_600);
    // Anything that is not a client request gets no answer, and a note.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"not sntp", server).await.unwrap();
    events.wait_for(&["not an SNTP client request"]).await;
    emu.shutdown().await;
}

#[test]
fn emulate_sntp_flag_serves_time_next_to_dps_and_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_emulate(dir.path(), &["--sntp", "127.0.0.1:0"]);
    let server = address_after(&lines, "SNTP on udp ");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(ask(server));
    let _ = child.kill();
    let _ = child.wait();
    // The emulator's clock is the PC's here.
    assert!(t.offset().abs() < 60_000_000, "offset {} µs", t.offset());
    assert!(t.sec() >= now() - 60);
}
