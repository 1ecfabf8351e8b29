//! The arithmetic of a chunked upload: how a file is cut into chunks, which chunks have
//! arrived, and the journal record that makes a stored chunk survive a restart.
//! Pure; the bitmap is sized once from the chunk count and never grows.

use super::hash::Digest;

/// How a file of `size` bytes is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: u32,
}

/// Why an upload of this size cannot be planned.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub max_size: u64,
}

impl Plan {
    /// Picks the chunk size: `base`, doubled until the file fits in `max_chunks` chunks,
    /// but never above `max_chunk`. An empty file has zero chunks.
    pub fn new(size: u64, base: u64, max_chunk: u64, max_chunks: u32) -> Result<Plan, TooLarge> {
        let mut chunk_size = base;
        while size.div_ceil(chunk_size) > u64::from(max_chunks) {
            if chunk_size * 2 > max_chunk {
                return Err(TooLarge {
                    max_size: max_chunk * u64::from(max_chunks),
                });
            }
            chunk_size *= 2;
        }
        Ok(Plan {
            size,
            chunk_size,
            chunks: size.div_ceil(chunk_size) as u32,
        })
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * self.chunk_size
    }

    /// Length of chunk `index`: `chunk_size`, except the last, which holds the rest.
    /// `None` for an index past the end.
    pub fn chunk_len(&self, index: u32) -> Option<u64> {
        if index >= self.chunks {
            return None;
        }
        Some((self.size - self.offset(index)).min(self.chunk_size))
    }
}

/// Which chunks of an upload are stored: one bit per chunk, allocated once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSet {
    bits: Vec<u64>,
    len: u32,
    count: u32,
}

impl ChunkSet {
    pub fn new(len: u32) -> ChunkSet {
        ChunkSet {
            bits: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Marks `index` stored. Returns false if it already was (or lies past the end).
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.len || self.contains(index) {
            return false;
        }
        self.bits[index as usize / 64] |= 1 << (index % 64);
        self.count += 1;
        true
    }

    pub fn contains(&self, index: u32) -> bool {
        index < self.len && self.bits[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Chunks stored so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// The chunks still missing, as half-open ranges `[start, end)` in ascending order.
    pub fn missing_ranges(&self) -> Vec<[u32; 2]> {
        let mut out = Vec::new();
        let mut start = None;
        for i in 0..self.len {
            match (self.contains(i), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    out.push([s, i]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push([s, self.len]);
        }
        out
    }
}

/// One journal record: chunk `index` with digest `digest` is on disk. Fixed 36 bytes, so a
/// record torn by a crash is recognised by length and ignored.
pub const RECORD_LEN: usize = 36;

pub fn encode_record(index: u32, digest: &Digest) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..4].copy_from_slice(&index.to_le_bytes());
    out[4..].copy_from_slice(&digest.0);
    out
}

/// Reads a journal: every whole record, in order. A torn tail is skipped.
pub fn decode_records(bytes: &[u8]) -> impl Iterator<Item = (u32, Digest)> + '_ {
    bytes.chunks_exact(RECORD_LEN).map(|r| {
        let index = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        let mut d = [0u8; 32];
        d.copy_from_slice(&r[4..]);
        (index, Digest(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let p = Plan::new(10, 4, 16, 100).unwrap();
        assert_eq!((p.chunk_size, p.chunks), (4, 3));
        assert_eq!(p.chunk_len(0), Some(4));
        assert_eq!(p.chunk_len(2), Some(2));
        assert_eq!(p.chunk_len(3), None);
        assert_eq!(Plan::new(0, 4, 16, 10).unwrap().chunks, 0);
        // Grows the chunk to stay under max_chunks.
        let p = Plan::new(100, 4, 64, 4).unwrap();
        assert_eq!((p.chunk_size, p.chunks), (32, 4));
        assert_eq!(Plan::new(1000, 4, 64, 4), Err(TooLarge { max_size: 256 }));
        // Exact multiple: last chunk is whole.
        let p = Plan::new(8, 4, 16, 10).unwrap();
        assert_eq!((p.chunks, p.chunk_len(1)), (2, Some(4)));
    }

    #[test]
    fn chunk_set_boundaries() {
        let mut s = ChunkSet::new(130);
        assert_eq!(s.missing_ranges(), vec![[0, 130]]);
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(!s.insert(130));
        assert!(s.insert(64));
        assert!(s.insert(129));
        assert_eq!(s.missing_ranges(), vec![[1, 64], [65, 129]]);
        for i in 0..130 {
            s.insert(i);
        }
        assert!(s.is_complete());
        assert_eq!(s.count(), 130);
        assert!(s.missing_ranges().is_empty());
        assert!(ChunkSet::new(0).is_complete());
    }

    proptest::proptest! {
        /// The missing ranges and the stored chunks always partition `0..len`.
        #[test]
        fn missing_ranges_complement_the_set(len in 0u32..300, picks in proptest::collection::vec(0u32..320, 0..200)) {
            let mut s = ChunkSet::new(len);
            for p in picks {
                s.insert(p);
            }
            let mut seen = vec![false; len as usize];
            for [a, b] in s.missing_ranges() {
                proptest::prop_assert!(a < b && b <= len);
                for i in a..b {
                    proptest::prop_assert!(!s.contains(i) && !seen[i as usize]);
                    seen[i as usize] = true;
                }
            }
            let stored = (0..len).filter(|&i| s.contains(i)).count() as u32;
            proptest::prop_assert_eq!(stored, s.count());
            proptest::prop_assert_eq!(seen.iter().filter(|&&m| m).count() as u32, len - stored);
        }

        /// Chunks cover the file exactly once, none longer than the chunk size.
        #[test]
        fn plans_cover_the_file(size in 0u64..1 << 40) {
            if let Ok(p) = Plan::new(size, 1 << 20, 16 << 20, 1 << 16) {
                let total: u64 = (0..p.chunks).map(|i| p.chunk_len(i).unwrap()).sum();
                proptest::prop_assert_eq!(total, size);
                proptest::prop_assert!(p.chunks == 0 || p.chunk_len(p.chunks - 1).unwrap() > 0);
            }
        }
    }

    #[test]
    fn journal_records_survive_a_torn_tail() {
        let d = Digest::of(b"x");
        let mut bytes = encode_record(7, &d).to_vec();
        bytes.extend_from_slice(&encode_record(9, &d));
        bytes.extend_from_slice(&[1, 2, 3]);
        let got: Vec<_> = decode_records(&bytes).collect();
        assert_eq!(got, vec![(7, d), (9, d)]);
    }
}
