//! The chunk protocol's wire (SPEC §4): JSON text messages tagged `t`, the 48-byte header of
//! a binary chunk piece, and `have` bitfields in base64. Pure encoding and decoding; it
//! never decides what to send.

use super::manifest::ManifestJson;
use crate::core::hash::Digest;
use serde::{Deserialize, Serialize};

/// The data channel's label.
pub const CHANNEL_LABEL: &str = "lanvan-chunks";
/// Largest payload of one piece (bytes after the 48-byte header).
pub const PIECE_PAYLOAD: usize = 65_536;
/// Bytes of a piece header.
pub const PIECE_HEADER: usize = 48;
/// `kind` byte of a chunk piece.
pub const KIND_PIECE: u8 = 1;

/// Who a peer is (`hello.role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Box,
    Browser,
    Cli,
    /// A role this build does not know; not an error.
    #[serde(other)]
    Other,
}

/// `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Busy,
    BadRequest,
    BadData,
    #[serde(other)]
    Other,
}

/// A text message on a `lanvan-chunks` channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    Hello {
        id: String,
        name: String,
        role: Role,
        max_requests: u32,
    },
    Announce {
        manifests: Vec<Digest>,
    },
    Query {
        manifest: Digest,
    },
    /// Exactly one of `all`, `bitfield`, `index` is set; see [`Message::holding`].
    Have {
        manifest: Digest,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bitfield: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    GetManifest {
        manifest: Digest,
    },
    Manifest(Box<ManifestJson>),
    RequestChunk {
        manifest: Digest,
        index: u32,
        hash: Digest,
    },
    Cancel {
        manifest: Digest,
        index: u32,
    },
    Error {
        code: ErrorCode,
        #[serde(default)]
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
}

/// What a `have` says a peer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    All,
    Some(Bitfield),
    /// One more chunk (an update to an earlier `have`).
    One(u32),
}

impl Message {
    /// Parses a text message. Anything unparsable (unknown `t`, bad hex, missing field)
    /// gives the `error` `bad_request` to send back; it is not fatal.
    pub fn parse(text: &str) -> Result<Message, Message> {
        serde_json::from_str(text).map_err(|e| Message::error(ErrorCode::BadRequest, e.to_string()))
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("chunk messages always serialize")
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error {
            code,
            message: message.into(),
            manifest: None,
            index: None,
        }
    }

    /// An error about one manifest (and one chunk of it).
    pub fn error_at(
        code: ErrorCode,
        message: &str,
        manifest: Digest,
        index: Option<u32>,
    ) -> Message {
        Message::Error {
            code,
            message: message.into(),
            manifest: Some(manifest),
            index,
        }
    }

    /// The `have` for `holding`.
    pub fn have(manifest: Digest, holding: &Holding) -> Message {
        let (all, bitfield, index) = match holding {
            Holding::All => (true, None, None),
            Holding::Some(b) => (false, Some(b.to_base64()), None),
            Holding::One(i) => (false, None, Some(*i)),
        };
        Message::Have {
            manifest,
            all,
            bitfield,
            index,
        }
    }

    /// What a `have` for a manifest of `chunks` chunks says, None when it is malformed
    /// (no field set, a bitfield of the wrong length or bad base64, an index past the end).
    pub fn holding(&self, chunks: u32) -> Option<Holding> {
        let Message::Have {
            all,
            bitfield,
            index,
            ..
        } = self
        else {
            return None;
        };
        match (all, bitfield, index) {
            (true, None, None) => Some(Holding::All),
            (false, Some(b), None) => Bitfield::from_base64(b, chunks).map(Holding::Some),
            (false, None, Some(i)) if *i < chunks => Some(Holding::One(*i)),
            _ => None,
        }
    }
}

/// The header of a binary chunk piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceHeader {
    pub index: u32,
    /// Where this piece's payload starts within the chunk.
    pub offset: u32,
    /// The whole chunk's length.
    pub chunk_len: u32,
    pub hash: Digest,
}

/// Why a binary frame is not a chunk piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceError {
    TooShort,
    UnknownKind(u8),
    /// Reserved bytes not zero, payload over 64 KiB, or past the chunk's end.
    Malformed,
}

impl PieceHeader {
    pub fn encode(&self) -> [u8; PIECE_HEADER] {
        let mut h = [0u8; PIECE_HEADER];
        h[0] = KIND_PIECE;
        h[4..8].copy_from_slice(&self.index.to_be_bytes());
        h[8..12].copy_from_slice(&self.offset.to_be_bytes());
        h[12..16].copy_from_slice(&self.chunk_len.to_be_bytes());
        h[16..48].copy_from_slice(&self.hash.0);
        h
    }

    /// A whole frame: header then payload.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(PIECE_HEADER + payload.len());
        f.extend_from_slice(&self.encode());
        f.extend_from_slice(payload);
        f
    }

    /// Splits a binary frame into header and payload, checking the layout (not the chunk).
    pub fn decode(frame: &[u8]) -> Result<(PieceHeader, &[u8]), PieceError> {
        if frame.is_empty() {
            return Err(PieceError::TooShort);
        }
        if frame[0] != KIND_PIECE {
            return Err(PieceError::UnknownKind(frame[0]));
        }
        if frame.len() < PIECE_HEADER {
            return Err(PieceError::TooShort);
        }
        let u32_at = |o: usize| u32::from_be_bytes(frame[o..o + 4].try_into().unwrap());
        let header = PieceHeader {
            index: u32_at(4),
            offset: u32_at(8),
            chunk_len: u32_at(12),
            hash: Digest(frame[16..48].try_into().unwrap()),
        };
        let payload = &frame[PIECE_HEADER..];
        let end = u64::from(header.offset) + payload.len() as u64;
        if frame[1..4] != [0, 0, 0]
            || payload.len() > PIECE_PAYLOAD
            || end > u64::from(header.chunk_len)
        {
            return Err(PieceError::Malformed);
        }
        Ok((header, payload))
    }
}

/// Which chunks a peer holds: bit i is chunk i, most significant bit of byte 0 first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Self {
        Bitfield {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
        }
    }
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// False past the end.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }
    /// Ignored past the end.
    pub fn set(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }
    pub fn clear(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }
    pub fn to_base64(&self) -> String {
        base64_encode(&self.bits)
    }
    /// A bitfield of `len` chunks; None for bad base64 or the wrong number of bytes.
    /// Bits past `len` in the last byte are ignored.
    pub fn from_base64(text: &str, len: u32) -> Option<Self> {
        let mut bits = base64_decode(text)?;
        if bits.len() != (len as usize).div_ceil(8) {
            return None;
        }
        if len % 8 != 0 {
            if let Some(last) = bits.last_mut() {
                *last &= 0xff << (8 - len % 8);
            }
        }
        Some(Bitfield { bits, len })
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what the browser's `btoa` makes).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = (u32::from(group[0]) << 16)
            | (u32::from(*group.get(1).unwrap_or(&0)) << 8)
            | u32::from(*group.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= group.len() {
                out.push(B64[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding required (as `btoa` makes it); None on anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if t.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for (gi, group) in t.chunks(4).enumerate() {
        let last = gi == t.len() / 4 - 1;
        let pad = group.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &group[..4 - pad] {
            let v = B64.iter().position(|&b| b == c)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Z=g="), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
        assert_eq!(base64_decode("Z*=="), None);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
    }

    #[test]
    fn bitfield_is_msb_first() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        b.set(10); // past the end: ignored
        assert_eq!(b.bits, vec![0x80, 0x40]);
        assert_eq!(b.count(), 2);
        let back = Bitfield::from_base64(&b.to_base64(), 10).unwrap();
        assert_eq!(back, b);
        assert!(Bitfield::from_base64(&b.to_base64(), 17).is_none());
        // Stray bits past the end are dropped.
        let stray = Bitfield::from_base64(&base64_encode(&[0xff, 0xff]), 10).unwrap();
        assert_eq!(stray.count(), 10);
        assert!(Bitfield::full(10).is_full());
    }

    #[test]
    fn piece_header_layout() {
        let h = PieceHeader {
            index: 7,
            offset: 65536,
            chunk_len: 262144,
            hash: Digest([0xab; 32]),
        };
        let frame = h.frame(b"xyz");
        assert_eq!(frame.len(), 51);
        assert_eq!(&frame[..4], &[1, 0, 0, 0]);
        assert_eq!(&frame[4..8], &7u32.to_be_bytes());
        assert_eq!(&frame[8..12], &65536u32.to_be_bytes());
        assert_eq!(&frame[12..16], &262144u32.to_be_bytes());
        assert_eq!(&frame[16..48], &[0xab; 32]);
        assert_eq!(PieceHeader::decode(&frame), Ok((h, &b"xyz"[..])));

        assert_eq!(PieceHeader::decode(&frame[..47]), Err(PieceError::TooShort));
        let mut bad = frame.clone();
        bad[0] = 2;
        assert_eq!(PieceHeader::decode(&bad), Err(PieceError::UnknownKind(2)));
        let mut bad = frame.clone();
        bad[2] = 1;
        assert_eq!(PieceHeader::decode(&bad), Err(PieceError::Malformed));
        let past = PieceHeader {
            offset: 262143,
            ..h
        }
        .frame(b"xy");
        assert_eq!(PieceHeader::decode(&past), Err(PieceError::Malformed));
        let big = PieceHeader { offset: 0, ..h }.frame(&vec![0; PIECE_PAYLOAD + 1]);
        assert_eq!(PieceHeader::decode(&big), Err(PieceError::Malformed));
    }

    #[test]
    fn messages_use_the_contract_names() {
        let m = Digest([1; 32]);
        let hex = m.to_hex();
        let cases = [
            (
                Message::Hello {
                    id: "box".into(),
                    name: "Box".into(),
                    role: Role::Box,
                    max_requests: 16,
                },
                json!({"t": "hello", "id": "box", "name": "Box", "role": "box", "max_requests": 16}),
            ),
            (
                Message::Announce { manifests: vec![m] },
                json!({"t": "announce", "manifests": [hex]}),
            ),
            (
                Message::Query { manifest: m },
                json!({"t": "query", "manifest": hex}),
            ),
            (
                Message::have(m, &Holding::All),
                json!({"t": "have", "manifest": hex, "all": true}),
            ),
            (
                Message::have(m, &Holding::One(3)),
                json!({"t": "have", "manifest": hex, "index": 3}),
            ),
            (
                Message::have(m, &Holding::Some(Bitfield::full(3))),
                json!({"t": "have", "manifest": hex, "bitfield": "4A=="}),
            ),
            (
                Message::GetManifest { manifest: m },
                json!({"t": "get_manifest", "manifest": hex}),
            ),
            (
                Message::RequestChunk {
                    manifest: m,
                    index: 2,
                    hash: m,
                },
                json!({"t": "request_chunk", "manifest": hex, "index": 2, "hash": hex}),
            ),
            (
                Message::Cancel {
                    manifest: m,
                    index: 2,
                },
                json!({"t": "cancel", "manifest": hex, "index": 2}),
            ),
            (
                Message::error_at(ErrorCode::NotFound, "no", m, Some(1)),
                json!({"t": "error", "code": "not_found", "message": "no", "manifest": hex, "index": 1}),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(serde_json::to_value(&msg).unwrap(), want);
            assert_eq!(Message::parse(&want.to_string()).unwrap(), msg);
        }
        let mj = ManifestJson {
            manifest: m,
            name: "a".into(),
            size: 0,
            chunk_size: 4,
            sha256: None,
            chunks: vec![],
        };
        let v = serde_json::to_value(Message::Manifest(Box::new(mj))).unwrap();
        assert_eq!(v["t"], "manifest");
        assert_eq!(v["chunk_size"], 4);
    }

    #[test]
    fn bad_messages_become_bad_request() {
        for text in [
            r#"{"t":"dance"}"#,
            r#"{"t":"query","manifest":"xyz"}"#,
            r#"{"manifest":"00"}"#,
            "not json",
        ] {
            let Err(Message::Error { code, .. }) = Message::parse(text) else {
                panic!("{text}")
            };
            assert_eq!(code, ErrorCode::BadRequest);
        }
        // Unknown roles and codes are tolerated.
        let hello = r#"{"t":"hello","id":"x","name":"n","role":"toaster","max_requests":1}"#;
        assert!(matches!(
            Message::parse(hello),
            Ok(Message::Hello {
                role: Role::Other,
                ..
            })
        ));
        let have = Message::Have {
            manifest: Digest([0; 32]),
            all: true,
            bitfield: None,
            index: Some(1),
        };
        assert_eq!(have.holding(4), None);
        let have = Message::Have {
            manifest: Digest([0; 32]),
            all: false,
            bitfield: None,
            index: Some(4),
        };
        assert_eq!(have.holding(4), None);
    }
}
