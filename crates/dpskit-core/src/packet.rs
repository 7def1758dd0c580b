//! MQTT 3.1.1 packets as a device client writes and reads them: the subset DPS and IoT Hub
//! use (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH/PUBACK both ways, PINGREQ/PINGRESP,
//! DISCONNECT).
//!
//! Written here rather than taken from a crate because [`decode`] reads the network on the
//! board: it must never panic, whatever arrives, and must refuse a packet larger than the
//! device can hold before buffering it. The no_std codec crates checked either index past
//! the end of truncated packets (mqttrs 0.4) or speak only MQTT 5 (rust-mqtt, minimq);
//! rumqttc's codec needs std. The emulator, on the server side, keeps using rumqttc's.
//!
//! Sans-IO: bytes in, packets out; packets in, bytes appended to a `Vec`.

use crate::mqtt::QoS;
use alloc::vec::Vec;
use core::fmt;

/// The largest remaining length MQTT can encode (four length bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A packet from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        return_code: u8,
    },
    /// `granted` is false when any return code is 0x80 (failure).
    SubAck {
        packet_id: u16,
        granted: bool,
    },
    Publish {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        /// Present for QoS 1; answer it with [`puback`].
        packet_id: Option<u16>,
    },
    PubAck {
        packet_id: u16,
    },
    PingResp,
    /// The server closes (servers should not send this in 3.1.1, but some do).
    Disconnect,
}

/// Why bytes from the server are not an acceptable packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet breaks MQTT 3.1.1; the text says how.
    Malformed(&'static str),
    /// A packet type a client never receives (CONNECT, SUBSCRIBE, …) or QoS 2.
    Unexpected(u8),
    /// The packet announces more bytes than the client accepts.
    TooLarge { length: usize, max: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(why) => write!(f, "malformed MQTT packet ({why})"),
            DecodeError::Unexpected(t) => write!(f, "unexpected MQTT packet type {t}"),
            DecodeError::TooLarge { length, max } => write!(
                f,
                "an MQTT packet of {length} bytes, more than the {max} bytes this device accepts"
            ),
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or the password is longer than 65,535 bytes.
    FieldTooLong(&'static str),
    /// The packet would exceed what MQTT can frame.
    PacketTooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FieldTooLong(field) => {
                write!(f, "the MQTT {field} is longer than 65,535 bytes")
            }
            EncodeError::PacketTooLarge => f.write_str("the MQTT packet is too large to send"),
        }
    }
}

/// The length of the first complete packet in `buf` (fixed header included): `Ok(None)`
/// while more bytes are needed. Checks the announced size against `max` before the body
/// arrives, so nothing larger is ever buffered.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + remaining;
            if total > max {
                return Err(DecodeError::TooLarge { length: total, max });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// Decodes the first packet of `buf`, if complete: the packet and how many bytes it used.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(total) = frame(buf, max)? else {
        return Ok(None);
    };
    let first = buf[0];
    let header_len = 2 + buf[1..total].iter().take_while(|b| *b & 0x80 != 0).count();
    let body = &buf[header_len..total];
    let kind = first >> 4;
    let flags = first & 0x0f;
    let packet = match kind {
        2 => {
            let [ack_flags, code] = exact::<2>(body, "CONNACK is not 2 bytes")?;
            if flags != 0 || ack_flags & 0xfe != 0 {
                return Err(DecodeError::Malformed("CONNACK flags"));
            }
            Packet::ConnAck {
                session_present: ack_flags & 1 == 1,
                return_code: code,
            }
        }
        3 => decode_publish(flags, body)?,
        4 => {
            if flags != 0 {
                return Err(DecodeError::Malformed("PUBACK flags"));
            }
            Packet::PubAck {
                packet_id: u16::from_be_bytes(exact::<2>(body, "PUBACK is not 2 bytes")?),
            }
        }
        9 => {
            if flags != 0 || body.len() < 3 {
                return Err(DecodeError::Malformed("SUBACK"));
            }
            let codes = &body[2..];
            if codes.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return Err(DecodeError::Malformed("SUBACK return code"));
            }
            Packet::SubAck {
                packet_id: u16::from_be_bytes([body[0], body[1]]),
                granted: !codes.contains(&0x80),
            }
        }
        13 => {
            if flags != 0 || !body.is_empty() {
                return Err(DecodeError::Malformed("PINGRESP"));
            }
            Packet::PingResp
        }
        14 => Packet::Disconnect,
        other => return Err(DecodeError::Unexpected(other)),
    };
    Ok(Some((packet, total)))
}

fn exact<const N: usize>(body: &[u8], why: &'static str) -> Result<[u8; N], DecodeError> {
    body.try_into().map_err(|_| DecodeError::Malformed(why))
}

fn decode_publish(flags: u8, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let qos = match (flags >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => return Err(DecodeError::Unexpected(3)),
        _ => return Err(DecodeError::Malformed("PUBLISH QoS 3")),
    };
    let (topic, rest) = split_string(body).ok_or(DecodeError::Malformed("PUBLISH topic"))?;
    let topic = core::str::from_utf8(topic)
        .map_err(|_| DecodeError::Malformed("PUBLISH topic is not UTF-8"))?;
    let (packet_id, payload) = match qos {
        QoS::AtMostOnce => (None, rest),
        QoS::AtLeastOnce => {
            let (id, payload) = rest
                .split_first_chunk::<2>()
                .ok_or(DecodeError::Malformed("PUBLISH packet identifier"))?;
            let id = u16::from_be_bytes(*id);
            if id == 0 {
                return Err(DecodeError::Malformed("PUBLISH packet identifier 0"));
            }
            (Some(id), payload)
        }
    };
    Ok(Packet::Publish {
        topic,
        payload,
        qos,
        packet_id,
    })
}

/// A length-prefixed field and what follows it.
fn split_string(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// What goes into a CONNECT.
#[derive(Clone, Copy)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a [u8],
    pub keep_alive_secs: u16,
    pub clean_session: bool,
}

impl fmt::Debug for Connect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Appends a CONNECT (protocol level 4, MQTT 3.1.1).
pub fn connect(out: &mut Vec<u8>, c: &Connect<'_>) -> Result<(), EncodeError> {
    let mut body = Vec::with_capacity(16 + c.client_id.len() + c.username.len() + c.password.len());
    put_string(&mut body, b"MQTT", "protocol name")?;
    body.push(4);
    // user name + password flags, clean session
    body.push(0xc0 | if c.clean_session { 0x02 } else { 0 });
    body.extend_from_slice(&c.keep_alive_secs.to_be_bytes());
    put_string(&mut body, c.client_id.as_bytes(), "client ID")?;
    put_string(&mut body, c.username.as_bytes(), "user name")?;
    put_string(&mut body, c.password, "password")?;
    put_packet(out, 0x10, &body)
}

/// Appends a SUBSCRIBE for one filter.
pub fn subscribe(
    out: &mut Vec<u8>,
    packet_id: u16,
    filter: &str,
    qos: QoS,
) -> Result<(), EncodeError> {
    let mut body = Vec::with_capacity(5 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_string(&mut body, filter.as_bytes(), "topic filter")?;
    body.push(qos as u8);
    put_packet(out, 0x82, &body)
}

/// Appends a PUBLISH; `packet_id` is used for QoS 1 and ignored for QoS 0.
pub fn publish(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: u16,
) -> Result<(), EncodeError> {
    let mut head = Vec::with_capacity(4 + topic.len());
    put_string(&mut head, topic.as_bytes(), "topic")?;
    if qos == QoS::AtLeastOnce {
        head.extend_from_slice(&packet_id.to_be_bytes());
    }
    let remaining = head.len() + payload.len();
    put_header(out, 0x30 | ((qos as u8) << 1), remaining)?;
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a PUBACK.
pub fn puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// Appends a PINGREQ.
pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0]);
}

/// Appends a DISCONNECT.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xe0, 0]);
}

fn put_string(out: &mut Vec<u8>, s: &[u8], field: &'static str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

fn put_packet(out: &mut Vec<u8>, first: u8, body: &[u8]) -> Result<(), EncodeError> {
    put_header(out, first, body.len())?;
    out.extend_from_slice(body);
    Ok(())
}

fn put_header(out: &mut Vec<u8>, first: u8, mut remaining: usize) -> Result<(), EncodeError> {
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge);
    }
    out.push(first);
    loop {
        let mut b = (remaining & 0x7f) as u8;
        remaining >>= 7;
        if remaining > 0 {
            b |= 0x80;
        }
        out.push(b);
        if remaining == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let mut out = Vec::new();
        connect(
            &mut out,
            &Connect {
                client_id: "dev",
                username: "u",
                password: b"p",
                keep_alive_secs: 60,
                clean_session: true,
            },
        )
        .unwrap();
        assert_eq!(
            out,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60, 0, 3, b'd', b'e', b'v', 0,
                1, b'u', 0, 1, b'p'
            ]
        );
    }

    #[test]
    fn publish_round_trips_and_long_lengths_use_more_bytes() {
        let payload = vec![7u8; 200];
        let mut out = Vec::new();
        publish(&mut out, "a/b", &payload, QoS::AtLeastOnce, 9).unwrap();
        assert_eq!(&out[..3], &[0x32, 0xcf, 0x01]); // 207 = 0x4f | 0x80, 1
        let (p, used) = decode(&out, 1024).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            p,
            Packet::Publish {
                topic: "a/b",
                payload: &payload,
                qos: QoS::AtLeastOnce,
                packet_id: Some(9)
            }
        );
    }

    #[test]
    fn incomplete_packets_wait_and_oversized_ones_are_refused_early() {
        let mut out = Vec::new();
        publish(&mut out, "t", &[1; 100], QoS::AtMostOnce, 0).unwrap();
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut], 1024), Ok(None), "cut at {cut}");
        }
        // Only the header has arrived, but it announces too much: refused now.
        assert_eq!(
            decode(&out[..2], 50),
            Err(DecodeError::TooLarge {
                length: out.len(),
                max: 50
            })
        );
    }

    #[test]
    fn truncated_and_hostile_packets_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            &[0x40, 0],                   // PUBACK without an identifier
            &[0x40, 1, 0],                // PUBACK with one byte
            &[0x90, 2, 0, 1],             // SUBACK without return codes
            &[0x90, 3, 0, 1, 7],          // SUBACK with an invalid code
            &[0x20, 1, 0],                // CONNACK too short
            &[0x20, 2, 2, 0],             // CONNACK reserved flag
            &[0x32, 3, 0, 1, b'x'],       // QoS 1 PUBLISH without identifier
            &[0x32, 5, 0, 1, b'x', 0, 0], // packet identifier 0
            &[0x30, 2, 0, 9],             // topic longer than the packet
            &[0x30, 3, 0, 1, 0xff],       // topic not UTF-8
            &[0x34, 2, 0, 0],             // QoS 2
            &[0x36, 2, 0, 0],             // QoS 3
            &[0x10, 0],                   // CONNECT from a server
            &[0xd0, 1, 0],                // PINGRESP with a body
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ];
        for c in cases {
            assert!(decode(c, 1 << 20).is_err(), "{c:?} decoded");
        }
    }

    #[test]
    fn server_packets_decode() {
        assert_eq!(
            decode(&[0x20, 2, 1, 5], 16),
            Ok(Some((
                Packet::ConnAck {
                    session_present: true,
                    return_code: 5
                },
                4
            )))
        );
        assert_eq!(
            decode(&[0x90, 3, 0, 7, 0x80, 0xd0, 0], 16),
            Ok(Some((
                Packet::SubAck {
                    packet_id: 7,
                    granted: false
                },
                5
            )))
        );
        assert_eq!(
            decode(&[0x40, 2, 1, 2], 16),
            Ok(Some((Packet::PubAck { packet_id: 258 }, 4)))
        );
        assert_eq!(decode(&[0xd0, 0], 16), Ok(Some((Packet::PingResp, 2))));
        let mut out = Vec::new();
        subscribe(
            &mut out,
            3,
            "devices/d/messages/devicebound/#",
            QoS::AtLeastOnce,
        )
        .unwrap();
        assert_eq!(&out[..4], &[0x82, 37, 0, 3]);
        assert_eq!(out.last(), Some(&1));
        let mut out = Vec::new();
        puback(&mut out, 0x1234);
        pingreq(&mut out);
        disconnect(&mut out);
        assert_eq!(out, [0x40, 2, 0x12, 0x34, 0xc0, 0, 0xe0, 0]);
    }
}
