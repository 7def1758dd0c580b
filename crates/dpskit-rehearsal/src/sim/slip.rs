//! SLIP framing (RFC 1055 as the ESP ROM loader uses it): `C0 … C0`, with `C0` → `DB DC` and
//! `DB` → `DB DD` inside a frame.
//!
//! The decoder behaves like the chip's receiver: bytes outside a frame are ignored, an empty
//! frame (`C0 C0`) is no frame, and a bad escape drops the frame it occurs in.

/// Frame delimiter.
pub const END: u8 = 0xC0;
/// Escape byte.
pub const ESC: u8 = 0xDB;
/// Escaped `END`.
pub const ESC_END: u8 = 0xDC;
/// Escaped `ESC`.
pub const ESC_ESC: u8 = 0xDD;

/// Encodes one frame, delimiters included.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 16 + 2);
    encode_into(payload, &mut out);
    out
}

/// Appends one encoded frame to `out`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.push(END);
    for &b in payload {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            _ => out.push(b),
        }
    }
    out.push(END);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: everything but `END` is line noise.
    Idle,
    /// Inside a frame.
    InFrame,
    /// Inside a frame, after `ESC`.
    Escape,
    /// Inside a frame that had a bad escape; skip to the next `END`.
    Discard,
}

/// Incremental SLIP decoder; feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    frame: Vec<u8>,
    max_len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that accepts frames up to 64 KiB (larger than any loader command).
    pub fn new() -> Self {
        Self::with_max_len(0x1_0000 + 64)
    }

    /// A decoder that discards frames longer than `max_len` decoded bytes.
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            state: State::Idle,
            frame: Vec::new(),
            max_len,
        }
    }

    /// Forgets a partially received frame (a reset of the chip's UART receiver).
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.frame.clear();
    }

    /// Feeds one byte; returns a complete frame when `b` closes one.
    pub fn push(&mut self, b: u8) -> Option<Vec<u8>> {
        match self.state {
            State::Idle => {
                if b == END {
                    self.state = State::InFrame;
                    self.frame.clear();
                }
                None
            }
            State::InFrame => match b {
                END => {
                    if self.frame.is_empty() {
                        // `C0 C0`: the first C0 closed nothing, the second opens a frame.
                        None
                    } else {
                        self.state = State::Idle;
                        Some(std::mem::take(&mut self.frame))
                    }
                }
                ESC => {
                    self.state = State::Escape;
                    None
                }
                _ => self.store(b),
            },
            State::Escape => match b {
                ESC_END => {
                    self.state = State::InFrame;
                    self.store(END)
                }
                ESC_ESC => {
                    self.state = State::InFrame;
                    self.store(ESC)
                }
                END => {
                    // Broken escape at the end of a frame: drop it, a new one may start here.
                    self.frame.clear();
                    self.state = State::InFrame;
                    None
                }
                _ => {
                    self.frame.clear();
                    self.state = State::Discard;
                    None
                }
            },
            State::Discard => {
                if b == END {
                    self.state = State::InFrame;
                    self.frame.clear();
                }
                None
            }
        }
    }

    /// Feeds a slice; returns every frame it completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes.iter().filter_map(|&b| self.push(b)).collect()
    }

    fn store(&mut self, b: u8) -> Option<Vec<u8>> {
        if self.frame.len() >= self.max_len {
            self.frame.clear();
            self.state = State::Discard;
        } else {
            self.frame.push(b);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_both_special_bytes() {
        assert_eq!(
            encode(&[0x01, 0xC0, 0x02, 0xDB, 0x03]),
            vec![0xC0, 0x01, 0xDB, 0xDC, 0x02, 0xDB, 0xDD, 0x03, 0xC0]
        );
    }

    #[test]
    fn roundtrip_all_byte_values() {
        let payload: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut d = Decoder::new();
        assert_eq!(d.feed(&encode(&payload)), vec![payload]);
    }

    #[test]
    fn ignores_noise_between_frames_and_empty_frames() {
        let mut bytes = b"ESP-ROM:esp32s3\r\n".to_vec();
        bytes.extend_from_slice(&[0xC0, 0xC0]);
        bytes.extend(encode(b"one"));
        bytes.extend_from_slice(b"noise");
        bytes.extend(encode(b"two"));
        let mut d = Decoder::new();
        assert_eq!(d.feed(&bytes), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn frames_split_across_reads() {
        let enc = encode(&[0xC0; 10]);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in enc.chunks(3) {
            got.extend(d.feed(chunk));
        }
        assert_eq!(got, vec![vec![0xC0; 10]]);
    }

    #[test]
    fn bytes_after_a_closing_end_are_noise() {
        // Every sender opens each frame with its own END; `b` here is outside any frame.
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&[0xC0, b'a', 0xC0, b'b', 0xC0, 0xC0, b'c', 0xC0]),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn bad_escape_drops_only_that_frame() {
        let mut bytes = vec![0xC0, 0x01, 0xDB, 0x42, 0x02, 0xC0];
        bytes.extend(encode(b"ok"));
        let mut d = Decoder::new();
        assert_eq!(d.feed(&bytes), vec![b"ok".to_vec()]);
    }

    #[test]
    fn oversized_frame_is_discarded() {
        let mut d = Decoder::with_max_len(4);
        let mut bytes = encode(&[1, 2, 3, 4, 5]);
        bytes.extend(encode(&[9]));
        assert_eq!(d.feed(&bytes), vec![vec![9]]);
    }
}
