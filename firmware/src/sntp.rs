//! SNTP: the clock must be right before any TLS (certificate dates) and any SAS token
//! (expiry is wall-clock time). Sets the RTC, which the rest of the firmware reads.

use core::net::{IpAddr, SocketAddr};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use sntpc::{NtpContext, NtpTimestampGenerator};

/// Public pools tried in turn.
const SERVERS: [&str; 2] = ["pool.ntp.org", "time.google.com"];
use crate::clock::PLAUSIBLE_UNIX_SECS;

#[derive(Clone, Copy, Default)]
struct Timestamp {
    unix_us: u64,
}

impl NtpTimestampGenerator for Timestamp {
    fn init(&mut self) {
        self.unix_us = crate::clock::now_us();
    }
    fn timestamp_sec(&self) -> u64 {
        self.unix_us / 1_000_000
    }
    fn timestamp_subsec_micros(&self) -> u32 {
        (self.unix_us % 1_000_000) as u32
    }
}

/// Queries SNTP until an answer comes and sets the clock; retries with backoff forever (no
/// TLS is possible without it).
pub async fn sync(stack: Stack<'static>) {
    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx = [0u8; 128];
    let mut tx = [0u8; 128];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    if socket.bind(123).is_err() {
        let _ = socket.bind(0);
    }
    let socket = sntpc_net_embassy::UdpSocketWrapper::new(socket);
    let mut delay_s = 2u64;
    loop {
        for server in SERVERS {
            let addrs = match stack
                .dns_query(server, embassy_net::dns::DnsQueryType::A)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("SNTP: cannot resolve {server} ({e:?})");
                    continue;
                }
            };
            let Some(addr) = addrs.first() else { continue };
            let ip: IpAddr = (*addr).into();
            let query = sntpc::get_time(
                SocketAddr::new(ip, 123),
                &socket,
                NtpContext::new(Timestamp::default()),
            );
            match embassy_time::with_timeout(Duration::from_secs(5), query).await {
                Ok(Ok(t)) if t.seconds >= PLAUSIBLE_UNIX_SECS => {
                    let us = t.seconds * 1_000_000
                        + u64::from(sntpc::fraction_to_microseconds(t.seconds_fraction));
                    crate::clock::set_us(us);
                    log::info!("SNTP: clock set from {server} (Unix {})", t.seconds);
                    return;
                }
                Ok(Ok(t)) => log::warn!(
                    "SNTP: {server} answered an implausible time ({})",
                    t.seconds
                ),
                Ok(Err(e)) => log::warn!("SNTP: {server}: {e:?}"),
                Err(_) => log::warn!("SNTP: {server} did not answer within 5 s"),
            }
        }
        log::warn!("SNTP failed; no TLS before the clock is set (certificate dates and SAS expiry need it); retrying in {delay_s} s (UDP port 123 must be open)");
        Timer::after(Duration::from_secs(delay_s)).await;
        delay_s = (delay_s * 2).min(120);
    }
}
