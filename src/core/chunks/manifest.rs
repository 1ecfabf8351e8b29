//! A file's manifest (size, chunk size, the SHA-256 of every chunk) and its manifest hash,
//! which names the file in the chunk protocol. Pure: computes and checks, never reads a file.
//! A `Manifest` always holds a hash that matches its fields; invalid input never makes one.

use crate::core::hash::Digest;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Largest chunk size a manifest may name: a downloader holds one chunk per source in memory.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// The domain tag hashed before the fields (SPEC §1).
const TAG: &[u8] = b"lanvan-manifest-v1";

/// A validated manifest. Fields are read through accessors so the hash always matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    id: Digest,
    size: u64,
    chunk_size: u32,
    chunks: Vec<Digest>,
    /// Informational: the file's name where it came from.
    pub name: String,
    /// Informational: the whole file's SHA-256, when known.
    pub sha256: Option<Digest>,
}

/// Why a manifest was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// `chunk_size` is 0 or above [`MAX_CHUNK_SIZE`].
    BadChunkSize,
    /// The number of chunk hashes does not fit `size` and `chunk_size`.
    WrongChunkCount { expected: u64, got: usize },
    /// The stated manifest hash is not the one its fields give.
    HashMismatch,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestError::BadChunkSize => {
                write!(f, "chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
            }
            ManifestError::WrongChunkCount { expected, got } => {
                write!(
                    f,
                    "size and chunk_size need {expected} chunk hashes, got {got}"
                )
            }
            ManifestError::HashMismatch => {
                write!(
                    f,
                    "the manifest hash does not match size, chunk_size and chunks"
                )
            }
        }
    }
}

/// The JSON form (SPEC §1), as sent over HTTP and (with `"t":"manifest"`) on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestJson {
    pub manifest: Digest,
    #[serde(default)]
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
    pub chunks: Vec<Digest>,
}

/// How many chunks a file of `size` bytes has when cut into `chunk_size` pieces.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// The manifest hash of these fields (SPEC §1).
pub fn manifest_hash(size: u64, chunk_size: u32, chunks: &[Digest]) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(TAG);
    h.update(size.to_be_bytes());
    h.update(chunk_size.to_be_bytes());
    for c in chunks {
        h.update(c.0);
    }
    Digest(h.finalize().into())
}

impl Manifest {
    /// A manifest from its fields; refuses a chunk size out of range or a chunk list that
    /// does not fit the size.
    pub fn new(size: u64, chunk_size: u32, chunks: Vec<Digest>) -> Result<Self, ManifestError> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(ManifestError::BadChunkSize);
        }
        let expected = chunk_count(size, chunk_size);
        if expected != chunks.len() as u64 {
            return Err(ManifestError::WrongChunkCount {
                expected,
                got: chunks.len(),
            });
        }
        Ok(Manifest {
            id: manifest_hash(size, chunk_size, &chunks),
            size,
            chunk_size,
            chunks,
            name: String::new(),
            sha256: None,
        })
    }

    /// Checks a received JSON manifest: valid fields and a manifest hash that matches them.
    pub fn from_json(j: ManifestJson) -> Result<Self, ManifestError> {
        let mut m = Manifest::new(j.size, j.chunk_size, j.chunks)?;
        if m.id != j.manifest {
            return Err(ManifestError::HashMismatch);
        }
        m.name = j.name;
        m.sha256 = j.sha256;
        Ok(m)
    }

    /// The JSON form (SPEC §1).
    pub fn to_json(&self) -> ManifestJson {
        ManifestJson {
            manifest: self.id,
            name: self.name.clone(),
            size: self.size,
            chunk_size: self.chunk_size,
            sha256: self.sha256,
            chunks: self.chunks.clone(),
        }
    }

    /// The manifest hash: the file's name in the chunk protocol.
    pub fn id(&self) -> Digest {
        self.id
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    pub fn chunks(&self) -> &[Digest] {
        &self.chunks
    }
    /// Number of chunks (0 for an empty file).
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }
    /// The SHA-256 of chunk `i`, None past the end.
    pub fn chunk_hash(&self, i: u32) -> Option<Digest> {
        self.chunks.get(i as usize).copied()
    }
    /// Byte offset of chunk `i` in the file.
    pub fn chunk_offset(&self, i: u32) -> u64 {
        u64::from(i) * u64::from(self.chunk_size)
    }
    /// Length of chunk `i`: `chunk_size`, except the last one which may be short; 0 past the end.
    pub fn chunk_len(&self, i: u32) -> u32 {
        if i >= self.chunk_count() {
            return 0;
        }
        let rest = self.size - self.chunk_offset(i);
        rest.min(u64::from(self.chunk_size)) as u32
    }
}

/// Computes a manifest from a file's bytes fed in order, in slices of any length.
pub struct Chunker {
    chunk_size: u32,
    size: u64,
    in_chunk: u32,
    chunk: sha2::Sha256,
    whole: sha2::Sha256,
    chunks: Vec<Digest>,
}

impl Chunker {
    /// `chunk_size` must be in 1..=MAX_CHUNK_SIZE (checked again by `finish`).
    pub fn new(chunk_size: u32) -> Self {
        Chunker {
            chunk_size: chunk_size.max(1),
            size: 0,
            in_chunk: 0,
            chunk: sha2::Sha256::new(),
            whole: sha2::Sha256::new(),
            chunks: Vec::new(),
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.chunk.update(now);
            self.in_chunk += now.len() as u32;
            if self.in_chunk == self.chunk_size {
                self.close_chunk();
            }
            bytes = rest;
        }
    }

    fn close_chunk(&mut self) {
        let h = std::mem::take(&mut self.chunk);
        self.chunks.push(Digest(h.finalize().into()));
        self.in_chunk = 0;
    }

    /// The manifest, named `name`, with the whole file's SHA-256 filled in.
    pub fn finish(mut self, name: &str) -> Result<Manifest, ManifestError> {
        if self.in_chunk > 0 {
            self.close_chunk();
        }
        let mut m = Manifest::new(self.size, self.chunk_size, self.chunks)?;
        m.name = name.to_string();
        m.sha256 = Some(Digest(self.whole.finalize().into()));
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(bytes: &[u8], cs: u32) -> Manifest {
        let mut c = Chunker::new(cs);
        c.push(bytes);
        c.finish("x").unwrap()
    }

    #[test]
    fn hash_follows_the_spec_layout() {
        let data = b"hello world";
        let m = of(data, 4);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_len(2), 3);
        assert_eq!(m.chunk_len(3), 0);
        let mut pre = Vec::new();
        pre.extend_from_slice(b"lanvan-manifest-v1");
        pre.extend_from_slice(&11u64.to_be_bytes());
        pre.extend_from_slice(&4u32.to_be_bytes());
        for c in data.chunks(4) {
            pre.extend_from_slice(&Digest::of(c).0);
        }
        assert_eq!(m.id(), Digest::of(&pre));
        assert_eq!(m.sha256, Some(Digest::of(data)));
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let m = of(b"", 262144);
        assert_eq!(m.chunk_count(), 0);
        let mut pre = b"lanvan-manifest-v1".to_vec();
        pre.extend_from_slice(&0u64.to_be_bytes());
        pre.extend_from_slice(&262144u32.to_be_bytes());
        assert_eq!(m.id(), Digest::of(&pre));
    }

    #[test]
    fn chunker_is_independent_of_slicing() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let whole = of(&data, 1000);
        let mut c = Chunker::new(1000);
        for part in data.chunks(333) {
            c.push(part);
        }
        assert_eq!(c.finish("x").unwrap(), whole);
        assert_eq!(whole.chunk_count(), 10);
        assert_eq!(whole.chunk_len(9), 1000);
    }

    #[test]
    fn json_round_trip_and_rejects() {
        let m = of(b"abcdefghij", 3);
        let text = serde_json::to_string(&m.to_json()).unwrap();
        let back: ManifestJson = serde_json::from_str(&text).unwrap();
        assert_eq!(Manifest::from_json(back.clone()).unwrap(), m);

        let mut bad = back.clone();
        bad.size = 11;
        assert_eq!(Manifest::from_json(bad), Err(ManifestError::HashMismatch));
        let mut bad = back.clone();
        bad.chunks.pop();
        assert!(matches!(
            Manifest::from_json(bad),
            Err(ManifestError::WrongChunkCount {
                expected: 4,
                got: 3
            })
        ));
        let mut bad = back;
        bad.chunk_size = 0;
        assert_eq!(Manifest::from_json(bad), Err(ManifestError::BadChunkSize));
        assert!(
            serde_json::from_str::<ManifestJson>(&text.replace(&m.id().to_hex(), "zz")).is_err()
        );
    }
}
