//! The network under TLS: Wi-Fi on boards (`wifi`), or the OpenCores Ethernet MAC of
//! Espressif's QEMU (`openeth`), which lets CI run the whole firmware with no radio. Either
//! way the rest of the firmware sees one embassy-net stack with DHCP and DNS.

#[cfg(all(feature = "wifi", feature = "openeth"))]
compile_error!("choose one network: feature `wifi` (boards) or `openeth` (QEMU), not both");
#[cfg(not(any(feature = "wifi", feature = "openeth")))]
compile_error!("choose a network: feature `wifi` (boards) or `openeth` (QEMU)");

#[cfg(feature = "openeth")]
mod openeth;
#[cfg(feature = "wifi")]
mod wifi;

use dpskit_core::DeviceConfig;
use embassy_executor::Spawner;
use embassy_net::{Config, Stack, StackResources};
use static_cell::StaticCell;

/// Sockets: DHCP, DNS, the SNTP UDP socket and one TCP connection at a time.
const SOCKETS: usize = 4;

/// What the network needs from the chip.
pub struct Hardware {
    #[cfg(feature = "wifi")]
    pub wifi: esp_hal::peripherals::WIFI<'static>,
}

fn resources() -> &'static mut StackResources<SOCKETS> {
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    RESOURCES.init(StackResources::new())
}

/// Starts the network with DHCP; the error says what is wrong with the config.
#[cfg(feature = "wifi")]
pub fn start(
    spawner: &Spawner,
    hw: Hardware,
    cfg: &DeviceConfig,
    seed: u64,
) -> Result<Stack<'static>, wifi::WifiSetupError> {
    let (controller, device) = wifi::controller(
        hw.wifi,
        cfg.wifi_ssid.as_deref(),
        cfg.wifi_password.as_deref(),
    )?;
    let (stack, runner) = embassy_net::new(
        device,
        Config::dhcpv4(Default::default()),
        resources(),
        seed,
    );
    spawner.spawn(wifi::connection_task(controller).expect("the Wi-Fi task starts once"));
    spawner.spawn(wifi::net_task(runner).expect("the network task starts once"));
    Ok(stack)
}

/// Starts the emulator's Ethernet with DHCP (QEMU's user-mode network answers it).
#[cfg(feature = "openeth")]
pub fn start(
    spawner: &Spawner,
    _hw: Hardware,
    _cfg: &DeviceConfig,
    seed: u64,
) -> Result<Stack<'static>, core::convert::Infallible> {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(esp_hal::efuse::base_mac_address().as_bytes());
    if mac == [0; 6] {
        // QEMU's eFuses are blank; use the address QEMU's NIC model defaults to.
        mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    }
    let device = openeth::OpenEth::new(mac);
    let (stack, runner) = embassy_net::new(
        device,
        Config::dhcpv4(Default::default()),
        resources(),
        seed,
    );
    spawner.spawn(openeth::net_task(runner).expect("the network task starts once"));
    spawner.spawn(openeth::poll_task().expect("the Ethernet poll task starts once"));
    log::info!(
        "network: Ethernet (QEMU open_eth), MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    Ok(stack)
}

/// Waits for an IPv4 address from DHCP.
pub async fn wait_ip(stack: Stack<'static>) {
    stack.wait_link_up().await;
    stack.wait_config_up().await;
    if let Some(c) = stack.config_v4() {
        log::info!("network: address {}", c.address);
    }
}
