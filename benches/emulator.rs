//! How many devices the emulator provisions and serves in 10 s: each device is a real MQTT
//! client over real TLS on loopback that registers with DPS (register → 202 → wait the
//! `retry-after` of 1 s → poll → 200), connects to the hub and sends 10 QoS 1 telemetry
//! messages, each acknowledged after the emulator logged it as a JSON line. Devices start
//! continuously (at most `CONCURRENCY` at once); a device counts when its last PUBACK arrived
//! inside the window. Clients and emulator share one process and the machine's cores, so the
//! figure also pays for the clients' TLS.
//!
//! `cargo bench --bench emulator` measures; under `cargo test` (no `--bench` argument) it only
//! runs a short smoke pass so the suite stays fast.

#[path = "../tests/emulator_support/mod.rs"]
mod emulator_support;

use emulator_support::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TELEMETRY_PER_DEVICE: usize = 10;
const CONCURRENCY: usize = 400;

async fn one_device(emu: Arc<Emu>, id: String) -> Result<(), String> {
    let key = device_key(&id);
    let a = register(&emu.tls, emu.port(), &id, &key).await;
    if a.status != 200 {
        return Err(format!("DPS answered {}", a.status));
    }
    let mut hub = hub_connect(&emu.tls, emu.port(), &id, &key)
        .await
        .map_err(|e| e.to_string())?;
    hub.telemetry_acked(&id, TELEMETRY_PER_DEVICE).await?;
    let _ = hub.client.disconnect().await;
    Ok(())
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (window, max_devices) = if measuring {
        (Duration::from_secs(10), 20_000)
    } else {
        (Duration::from_secs(3), 5)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let emu = Arc::new(
            Emu::start_with(|c| {
                c.dps.retry_after_secs = 1;
                c.log_json = Some(c.state_dir.join("events.jsonl"));
            })
            .await,
        );
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + window);
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0u64;
        while started < max_devices {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.unwrap(),
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let (emu, done, failed) = (emu.clone(), done.clone(), failed.clone());
            let id = format!("bench-{started:05}");
            started += 1;
            tasks.spawn(async move {
                let r = one_device(emu, id).await;
                drop(permit);
                match r {
                    Ok(()) if Instant::now() <= start + window => done.fetch_add(1, Ordering::Relaxed),
                    Ok(()) => 0,
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
        // Let the stragglers finish (not counted) so every task and connection ends cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
        tasks.shutdown().await;
        // Only devices that finished inside the window were counted.
        let in_window = done.load(Ordering::Relaxed);
        let stats = emu.handle.stats();
        println!(
            "emulator: {in_window} devices provisioned and served (DPS register + poll, hub connect, {TELEMETRY_PER_DEVICE} telemetry each) in {} s on {} cores; started {started}, failed {}; emulator totals: {} registrations, {} telemetry messages, {} connections (goal: >= 1000)",
            window.as_secs(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            failed.load(Ordering::Relaxed),
            stats.registrations,
            stats.telemetry,
            stats.connections,
        );
        assert!(in_window > 0, "no device completed");
        match Arc::try_unwrap(emu) {
            Ok(emu) => emu.shutdown().await,
            Err(_) => panic!("a device task still holds the emulator"),
        }
    });
}
