//! One TLS connection carrying MQTT 3.1.1: framing (rumqttc's `mqttbytes::v4` codec), the
//! size limit of the moment, and the outgoing buffer with its QoS 1 bookkeeping.

use crate::emulator::hub::registry::C2dMessage;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How long a closing connection waits for the client to close its side. Real time, not the
/// emulator's clock: this is socket hygiene, not a protocol deadline.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) struct Conn {
    pub stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Largest packet read whole; bigger ones are refused from their header, before their
    /// body is read.
    pub max_packet: usize,
    next_pkid: u16,
    /// Unacknowledged QoS 1 publishes to the device (C2D ones are requeued if lost).
    pub inflight: HashMap<u16, Option<C2dMessage>>,
}

pub(crate) enum ReadError {
    Closed,
    Io(std::io::Error),
    TooLarge(usize),
    Malformed(CodecError),
    /// A CONNECT for another protocol than MQTT 3.1.1: its name and level.
    Protocol {
        name: String,
        level: u8,
    },
}

impl Conn {
    pub fn new(stream: TlsStream<TcpStream>, max_packet: usize) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(1024),
            max_packet,
            next_pkid: 0,
            inflight: HashMap::new(),
        }
    }

    /// Reads one packet. Cancel-safe: bytes already read stay in `rbuf`.
    pub async fn read_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            let protocol = connect_protocol(&self.rbuf);
            match Packet::read(&mut self.rbuf, self.max_packet) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(ReadError::TooLarge(n)),
                Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_))
                    if protocol.is_some() =>
                {
                    let (name, level) = protocol.expect("checked");
                    return Err(ReadError::Protocol { name, level });
                }
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    pub fn queue(&mut self, packet: Packet) {
        // Only packets we build; sizes are within limits.
        let _ = packet.write(&mut self.wbuf, usize::MAX);
    }

    /// Queues raw bytes (a CONNACK for a protocol the codec cannot build for).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Queues a publish to the device; QoS 1 gets a packet ID and is tracked until PUBACK.
    pub fn queue_publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        c2d: Option<C2dMessage>,
    ) {
        let level = if qos > 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut p = Publish::new(topic, level, payload);
        if qos > 0 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            p.pkid = self.next_pkid;
            self.inflight.insert(p.pkid, c2d);
        }
        self.queue(Packet::Publish(p));
    }

    /// Sends what is queued and closes gracefully: close_notify and FIN, then reads (and
    /// drops) what the client still sends until it closes too, for a moment at most. Closing
    /// with unread data makes the kernel send a reset, and a reset can destroy the last answer
    /// (a CONNACK refusal, a DPS 401) before the client has read it.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 512];
        let drain = async {
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }
}

/// The protocol name and level of a CONNECT at the start of `buf`, read without the codec
/// (which knows only "MQTT" 4 and 5): Paho falls back to MQTT 3.1 (`MQIsdp`, level 3) after a
/// refusal, and IoT Hub answers that with CONNACK 1, which such clients understand.
fn connect_protocol(buf: &[u8]) -> Option<(String, u8)> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // The remaining length: 1 to 4 bytes, 7 bits each.
    let mut at = 1;
    while buf.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    let at = at + 1;
    let len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
    let name = buf.get(at + 2..at + 2 + len)?;
    let level = *buf.get(at + 2 + len)?;
    Some((String::from_utf8_lossy(name).into_owned(), level))
}

#[cfg(test)]
mod tests {
    use super::connect_protocol;

    #[test]
    fn reads_the_protocol_of_a_connect() {
        // Paho's MQTT 3.1 CONNECT, as the embedded C SDK's samples send it on retry.
        let v31 = [
            0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c,
            0x00, 0x04, b'd', b'e', b'v', b'1',
        ];
        assert_eq!(connect_protocol(&v31), Some(("MQIsdp".into(), 3)));
        assert_eq!(connect_protocol(&v31[..8]), None);
        assert_eq!(connect_protocol(&[0x30, 0x00]), None);
    }
}
