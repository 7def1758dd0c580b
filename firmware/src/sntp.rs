//! SNTP: the clock must be right before any TLS (certificate dates) and any SAS token
//! (expiry is wall-clock time). Sets the RTC, which the rest of the firmware reads.

use core::net::{IpAddr, SocketAddr};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use sntpc::{NtpContext, NtpTimestampGenerator};

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

/// Queries `server` (the config's `ntp_server`, an IP address or a name; `pool.ntp.org` by
/// default) until it answers and sets the clock; retries with backoff forever: no TLS is
/// possible without the time.
pub async fn sync(stack: Stack<'static>, server: &str, port: u16) {
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
        match query(stack, &socket, server, port).await {
            Ok(secs) => {
                log::info!("SNTP: clock set from {server} (Unix {secs})");
                return;
            }
            Err(why) => log::warn!("SNTP: {why}"),
        }
        log::warn!("SNTP failed; no TLS before the clock is set (certificate dates and SAS expiry need it); retrying in {delay_s} s (is {server} reachable on UDP port {port}? set another with `dpskit config build --ntp-server`)");
        Timer::after(Duration::from_secs(delay_s)).await;
        delay_s = (delay_s * 2).min(120);
    }
}

/// One query; sets the clock on a plausible answer.
async fn query(
    stack: Stack<'static>,
    socket: &sntpc_net_embassy::UdpSocketWrapper<'_>,
    server: &str,
    port: u16,
) -> Result<u64, alloc::string::String> {
    use alloc::format;
    let ip: IpAddr = match server.parse() {
        Ok(ip) => ip,
        Err(_) => {
            let addrs = stack
                .dns_query(server, embassy_net::dns::DnsQueryType::A)
                .await
                .map_err(|e| format!("cannot resolve {server} ({e:?})"))?;
            let addr = addrs
                .first()
                .ok_or_else(|| format!("{server} has no address"))?;
            (*addr).into()
        }
    };
    let query = sntpc::get_time(
        SocketAddr::new(ip, port),
        socket,
        NtpContext::new(Timestamp::default()),
    );
    match embassy_time::with_timeout(Duration::from_secs(5), query).await {
        Ok(Ok(t)) if t.seconds >= PLAUSIBLE_UNIX_SECS => {
            let us = t.seconds * 1_000_000
                + u64::from(sntpc::fraction_to_microseconds(t.seconds_fraction));
            crate::clock::set_us(us);
            Ok(t.seconds)
        }
        Ok(Ok(t)) => Err(format!(
            "{server} answered an implausible time ({})",
            t.seconds
        )),
        Ok(Err(e)) => Err(format!("{server}: {e:?}")),
        Err(_) => Err(format!("{server} did not answer within 5 s")),
    }
}
