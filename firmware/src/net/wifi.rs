//! Wi-Fi station (esp-radio under embassy-net): joins the config's network and stays joined.

use core::sync::atomic::Ordering;
use embassy_net::Runner;
use embassy_time::{Duration, Timer};
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, WifiController,
};

/// Why Wi-Fi cannot start; logged, then the board waits.
#[derive(Debug)]
pub enum WifiSetupError {
    NoSsid,
    BadSsid,
    BadPassword,
    Driver(esp_radio::wifi::WifiError),
}

impl core::fmt::Display for WifiSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WifiSetupError::NoSsid => f.write_str("the config has no Wi-Fi SSID; write it again with `dpskit write-config --wifi-ssid NAME --wifi-password-file FILE`"),
            WifiSetupError::BadSsid => f.write_str("config: wifi_ssid is not a valid SSID (1 to 32 bytes)"),
            WifiSetupError::BadPassword => f.write_str("config: wifi_pass is not a valid WPA2 passphrase (8 to 63 characters)"),
            WifiSetupError::Driver(e) => write!(f, "the Wi-Fi driver did not start: {e:?}"),
        }
    }
}

/// The Wi-Fi controller for the config's credentials, and the station interface.
pub fn controller(
    wifi: esp_hal::peripherals::WIFI<'static>,
    ssid: Option<&str>,
    password: Option<&str>,
) -> Result<(WifiController<'static>, Interface), WifiSetupError> {
    let ssid = ssid.ok_or(WifiSetupError::NoSsid)?;
    let auth = match password.filter(|p| !p.is_empty()) {
        None => AuthenticationMethodConfig::Open,
        Some(p) => AuthenticationMethodConfig::WpaWpa2Personal(
            p.try_into().map_err(|_| WifiSetupError::BadPassword)?,
        ),
    };
    let station = StationConfig::default()
        .with_ssid(ssid.try_into().map_err(|_| WifiSetupError::BadSsid)?)
        .with_authentication(auth);
    let controller = WifiController::new(
        wifi,
        ControllerConfig::default().with_initial_config(WifiConfig::Station(station)),
    )
    .map_err(WifiSetupError::Driver)?;
    log::info!("Wi-Fi: joining {ssid:?}");
    Ok((controller, Interface::station()))
}

/// Keeps the station connected (reconnecting with a capped backoff) and publishes the RSSI.
#[embassy_executor::task]
pub async fn connection_task(mut controller: WifiController<'static>) {
    let mut delay_s = 1u64;
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                log::info!("Wi-Fi: associated");
                delay_s = 1;
                loop {
                    if let Ok(rssi) = controller.rssi() {
                        crate::status::RSSI.store(rssi, Ordering::Relaxed);
                    }
                    let gone = embassy_futures::select::select(
                        controller.wait_for_disconnect_async(),
                        Timer::after(Duration::from_secs(10)),
                    )
                    .await;
                    if let embassy_futures::select::Either::First(_) = gone {
                        break;
                    }
                }
                crate::status::RSSI.store(i32::MIN, Ordering::Relaxed);
                log::warn!("Wi-Fi: disconnected; reconnecting");
            }
            Err(e) => {
                log::warn!("Wi-Fi: could not join ({e:?}); check the SSID and password in the config (dpskit write-config); retrying in {delay_s} s");
                Timer::after(Duration::from_secs(delay_s)).await;
                delay_s = (delay_s * 2).min(60);
            }
        }
    }
}

#[embassy_executor::task]
pub async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
