//! The CONNACK, seen on the wire.
//!
//! mqttrust reports a refused connection only as "refused", but the state machines need the
//! MQTT 3.1.1 return code: 5 (not authorized) is final and explained, 3 (server unavailable)
//! is retried. The first four bytes a broker sends on a new connection are the CONNACK
//! (`0x20 0x02 flags code`), so the TLS connection feeds what it reads through this.

/// What the CONNACK said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub return_code: u8,
    pub session_present: bool,
}

/// Collects the first four bytes of a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnAckSniffer {
    head: [u8; 4],
    len: usize,
}

impl ConnAckSniffer {
    pub const fn new() -> Self {
        ConnAckSniffer {
            head: [0; 4],
            len: 0,
        }
    }

    /// Feeds bytes read from the connection, in order; chunks may be any size.
    pub fn feed(&mut self, bytes: &[u8]) {
        let take = (self.head.len() - self.len).min(bytes.len());
        self.head[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    /// The CONNACK, once four bytes that form one have been seen.
    pub fn connack(&self) -> Option<ConnAck> {
        match self.head {
            [0x20, 0x02, flags, code] if self.len == 4 && flags & !1 == 0 => Some(ConnAck {
                return_code: code,
                session_present: flags & 1 == 1,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_refusals_across_chunk_boundaries() {
        let mut s = ConnAckSniffer::new();
        s.feed(&[0x20]);
        assert_eq!(s.connack(), None);
        s.feed(&[0x02, 0x00]);
        assert_eq!(s.connack(), None);
        s.feed(&[0x05, 0x30, 0x00]); // the rest belongs to later packets
        assert_eq!(
            s.connack(),
            Some(ConnAck {
                return_code: 5,
                session_present: false
            })
        );
    }

    #[test]
    fn session_present_and_garbage() {
        let mut s = ConnAckSniffer::new();
        s.feed(&[0x20, 0x02, 0x01, 0x00]);
        assert_eq!(
            s.connack(),
            Some(ConnAck {
                return_code: 0,
                session_present: true
            })
        );
        let mut t = ConnAckSniffer::new();
        t.feed(b"HTTP/1.1 400");
        assert_eq!(t.connack(), None);
        let mut u = ConnAckSniffer::new();
        u.feed(&[0x20, 0x02, 0x80, 0x00]); // reserved flag bits set
        assert_eq!(u.connack(), None);
    }
}
