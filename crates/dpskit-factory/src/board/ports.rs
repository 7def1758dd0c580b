//! Serial ports on this PC: names (`/dev/ttyUSB0`, `COM8`), USB VID:PID and whether the USB
//! bridge is one ESP boards use. Through serialport, so the same on Linux, macOS and Windows.

use serde::Serialize;

/// One serial port as the OS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    pub port: String,
    /// USB vendor and product ID, `None` for a port that is not USB (or not known to be).
    #[serde(skip)]
    pub usb: Option<(u16, u16)>,
    /// `"303a:1001"` form of [`usb`](Self::usb), for output.
    pub vid_pid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// The USB bridge's name when it is one ESP boards use.
    pub esp_bridge: Option<&'static str>,
}

/// Every serial port the OS lists.
pub fn list() -> Result<Vec<PortInfo>, serialport::Error> {
    Ok(serialport::available_ports()?
        .into_iter()
        .map(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(u) => PortInfo {
                port: p.port_name,
                usb: Some((u.vid, u.pid)),
                vid_pid: Some(format!("{:04x}:{:04x}", u.vid, u.pid)),
                serial_number: u.serial_number,
                product: u.product,
                manufacturer: u.manufacturer,
                esp_bridge: esp_bridge_name(u.vid, u.pid),
            },
            _ => PortInfo {
                port: p.port_name,
                usb: None,
                vid_pid: None,
                serial_number: None,
                product: None,
                manufacturer: None,
                esp_bridge: None,
            },
        })
        .collect())
}

/// The port's USB IDs, if the OS lists it as a USB port.
pub fn usb_ids(port: &str) -> Option<(u16, u16)> {
    list()
        .ok()?
        .into_iter()
        .find(|p| p.port == port)
        .and_then(|p| p.usb)
}

/// True when `port` names a port that is there. On Unix a port is a device file; on Windows a
/// name such as `COM8` is not a file, so it counts when the OS lists it or when it looks like
/// a port name (opening it then says what is wrong).
pub fn exists(port: &str) -> bool {
    if std::path::Path::new(port).exists() {
        return true;
    }
    #[cfg(windows)]
    {
        let upper = port.trim_start_matches(r"\\.\").to_ascii_uppercase();
        if upper.starts_with("COM") && upper[3..].parse::<u16>().is_ok() {
            return true;
        }
        if let Ok(ports) = list() {
            return ports.iter().any(|p| p.port.eq_ignore_ascii_case(port));
        }
    }
    false
}

/// USB bridges found on ESP boards (and the S3's own USB-Serial/JTAG).
pub fn esp_bridge_name(vid: u16, pid: u16) -> Option<&'static str> {
    match (vid, pid) {
        (0x303a, 0x1001) => Some("Espressif USB-Serial/JTAG"),
        (0x303a, _) => Some("Espressif USB"),
        (0x10c4, 0xea60) | (0x10c4, 0xea70) => Some("Silicon Labs CP210x"),
        (0x1a86, 0x7523) | (0x1a86, 0x55d4) | (0x1a86, 0x55d3) => Some("WCH CH34x"),
        (0x0403, 0x6001) | (0x0403, 0x6010) | (0x0403, 0x6014) | (0x0403, 0x6015) => Some("FTDI"),
        _ => None,
    }
}
