//! The serving side of one `lanvan-chunks` channel: answers `query`, `get_manifest`,
//! `request_chunk` and `cancel`, and hands out pieces only when the caller asks (the
//! channel has room). Never reads a file itself, and never holds more than its read-ahead
//! (chunks being read or read and waiting their turn) plus the one chunk being sent.

use super::manifest::Manifest;
use super::wire::{ErrorCode, Holding, Message, PieceHeader, PIECE_PAYLOAD};
use crate::core::hash::Digest;
use std::collections::VecDeque;
use std::sync::Arc;

/// The manifests this peer can serve. Lookups must be cheap (in memory): they run on the
/// event loop for every request.
pub trait Library {
    fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>>;
    /// What this peer holds of `id`; by default all of any manifest it knows.
    fn holding(&self, id: &Digest) -> Option<Holding> {
        self.manifest(id).map(|_| Holding::All)
    }
}

/// A chunk the caller must read (bytes `manifest.chunk_offset(index)` ..
/// `+ manifest.chunk_len(index)` of the file) and hand back with [`Seeder::chunk_read`].
#[derive(Clone, Debug)]
pub struct ChunkRead {
    pub manifest: Arc<Manifest>,
    pub index: u32,
}

/// What the seeder wants done next.
#[derive(Debug)]
pub enum Output {
    /// Send this text message.
    Text(Message),
    /// Send this binary frame (a chunk piece).
    Piece(Vec<u8>),
    /// Read this chunk, then call `chunk_read`; at most `read_ahead` reads are asked for
    /// before their bytes come back.
    Read(ChunkRead),
}

/// What `handle_message` did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Consumed,
    /// Not a serving message (`hello`, `have`, `manifest`, `error`...): the downloader's.
    NotMine,
    /// The peer keeps asking without reading the answers: close the channel.
    Flooded,
}

struct Sending {
    manifest: Digest,
    header: PieceHeader,
    data: Vec<u8>,
    sent: usize,
}

struct Reading {
    manifest: Digest,
    index: u32,
    hash: Digest,
    cancelled: bool,
    /// The read's result once it is back: bytes that matched the chunk's hash, or None.
    done: Option<Option<Vec<u8>>>,
}

/// One channel's serving state.
pub struct Seeder {
    max_requests: usize,
    piece_size: usize,
    /// Reads asked for at once, at most (`with_read_ahead`).
    read_ahead: usize,
    queue: VecDeque<ChunkRead>,
    /// Reads asked for, in request order; chunks are sent in this order once back.
    reading: VecDeque<Reading>,
    sending: Option<Sending>,
    texts: VecDeque<Message>,
}

impl Seeder {
    /// A seeder that takes at most `max_requests` chunk requests outstanding (the number it
    /// tells in `hello`).
    pub fn new(max_requests: usize) -> Self {
        Seeder {
            max_requests: max_requests.max(1),
            piece_size: PIECE_PAYLOAD,
            read_ahead: 1,
            queue: VecDeque::new(),
            reading: VecDeque::new(),
            sending: None,
            texts: VecDeque::new(),
        }
    }

    /// Smaller pieces (tests cut small chunks into several pieces with this).
    pub fn with_piece_size(mut self, size: usize) -> Self {
        self.piece_size = size.clamp(1, PIECE_PAYLOAD);
        self
    }

    /// Lets up to `n` chunk reads be asked for before their bytes come back (1 by default),
    /// so a source can read the next chunks while it sends one. Each read holds up to one
    /// chunk in memory until its turn to be sent.
    pub fn with_read_ahead(mut self, n: usize) -> Self {
        self.read_ahead = n.max(1);
        self
    }

    /// Requests queued, being read or being sent.
    pub fn outstanding(&self) -> usize {
        self.queue.len()
            + self.reading.iter().filter(|r| !r.cancelled).count()
            + usize::from(self.sending.is_some())
    }

    /// Reads asked for whose chunk is not being sent yet (in flight, or back and waiting
    /// its turn, or cancelled and not back): the chunks this seeder holds or will hold
    /// besides the one it sends.
    pub fn reads_held(&self) -> usize {
        self.reading.len()
    }

    /// Takes one received text message.
    pub fn handle_message(&mut self, msg: &Message, library: &dyn Library) -> Handled {
        // Answers are small, but a peer that never reads them must not grow this queue.
        if self.texts.len() >= self.max_requests + 16 {
            return Handled::Flooded;
        }
        match msg {
            Message::Query { manifest } => {
                let reply = match library.holding(manifest) {
                    Some(h) => Message::have(*manifest, &h),
                    None => not_found(*manifest, None),
                };
                self.texts.push_back(reply);
            }
            Message::GetManifest { manifest } => {
                let reply = match library.manifest(manifest) {
                    Some(m) => Message::Manifest(Box::new(m.to_json())),
                    None => not_found(*manifest, None),
                };
                self.texts.push_back(reply);
            }
            Message::RequestChunk {
                manifest,
                index,
                hash,
            } => {
                if let Err(e) = self.request(library, *manifest, *index, *hash) {
                    self.texts.push_back(e);
                }
            }
            Message::Cancel { manifest, index } => self.cancel(*manifest, *index),
            _ => return Handled::NotMine,
        }
        Handled::Consumed
    }

    fn request(
        &mut self,
        library: &dyn Library,
        id: Digest,
        index: u32,
        hash: Digest,
    ) -> Result<(), Message> {
        let Some(m) = library.manifest(&id) else {
            return Err(not_found(id, Some(index)));
        };
        if m.chunk_hash(index) != Some(hash) {
            let text = "no chunk with that index and hash in this manifest";
            return Err(Message::error_at(
                ErrorCode::BadRequest,
                text,
                id,
                Some(index),
            ));
        }
        if let Some(Holding::Some(b)) = library.holding(&id) {
            if !b.get(index) {
                return Err(not_found(id, Some(index)));
            }
        }
        if self.is_requested(id, index) {
            let text = "that chunk is already requested";
            return Err(Message::error_at(
                ErrorCode::BadRequest,
                text,
                id,
                Some(index),
            ));
        }
        if self.outstanding() >= self.max_requests {
            let text = format!("at most {} requests outstanding", self.max_requests);
            return Err(Message::error_at(ErrorCode::Busy, &text, id, Some(index)));
        }
        self.queue.push_back(ChunkRead { manifest: m, index });
        Ok(())
    }

    fn is_requested(&self, id: Digest, index: u32) -> bool {
        self.queue
            .iter()
            .any(|r| r.manifest.id() == id && r.index == index)
            || self
                .reading
                .iter()
                .any(|r| !r.cancelled && r.manifest == id && r.index == index)
            || self
                .sending
                .as_ref()
                .is_some_and(|s| s.manifest == id && s.header.index == index)
    }

    fn cancel(&mut self, id: Digest, index: u32) {
        self.queue
            .retain(|r| !(r.manifest.id() == id && r.index == index));
        for r in &mut self.reading {
            if r.manifest == id && r.index == index {
                r.cancelled = true;
                // Bytes already back are of no use any more.
                r.done = r.done.as_ref().map(|_| None);
            }
        }
        self.drop_settled_cancels();
        if self
            .sending
            .as_ref()
            .is_some_and(|s| s.manifest == id && s.header.index == index)
        {
            self.sending = None;
        }
    }

    /// The bytes of a chunk asked for by `Output::Read` (None: the read failed). They are
    /// checked against the manifest, so a file changed on disk is refused, never sent.
    pub fn chunk_read(&mut self, read: &ChunkRead, bytes: Option<Vec<u8>>) {
        let id = read.manifest.id();
        let Some(r) = self
            .reading
            .iter_mut()
            .find(|r| r.done.is_none() && r.manifest == id && r.index == read.index)
        else {
            return;
        };
        let (hash, cancelled) = (r.hash, r.cancelled);
        let good = bytes.filter(|data| {
            !cancelled
                && data.len() as u32 == read.manifest.chunk_len(read.index)
                && Digest::of(data) == hash
        });
        let failed = good.is_none() && !cancelled;
        r.done = Some(good);
        if failed {
            self.texts.push_back(not_found(id, Some(read.index)));
        }
        self.drop_settled_cancels();
    }

    /// Forgets reads that are over and will send nothing (cancelled or failed), wherever
    /// they stand in the order.
    fn drop_settled_cancels(&mut self) {
        self.reading.retain(|r| !matches!(r.done, Some(None)));
    }

    /// Moves the oldest read, once back, to `sending`.
    fn next_to_send(&mut self) {
        if self.sending.is_some() {
            return;
        }
        let Some(Reading {
            done: Some(Some(_)),
            ..
        }) = self.reading.front()
        else {
            return;
        };
        let Some(Reading {
            manifest,
            index,
            hash,
            done: Some(Some(data)),
            ..
        }) = self.reading.pop_front()
        else {
            return;
        };
        let header = PieceHeader {
            index,
            offset: 0,
            chunk_len: data.len() as u32,
            hash,
        };
        self.sending = Some(Sending {
            manifest,
            header,
            data,
            sent: 0,
        });
    }

    /// The next thing to do. Call it only while the channel can take more (its buffered
    /// amount is low): each call yields at most one piece.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.poll_send() {
            return Some(o);
        }
        self.poll_read().map(Output::Read)
    }

    /// The next chunk to read, if the read-ahead has room: a caller that reads while it
    /// sends asks for these first (and as its own reads budget allows), then `poll_send`.
    pub fn poll_read(&mut self) -> Option<ChunkRead> {
        if self.reading.len() >= self.read_ahead {
            return None;
        }
        let read = self.queue.pop_front()?;
        self.reading.push_back(Reading {
            manifest: read.manifest.id(),
            index: read.index,
            hash: read
                .manifest
                .chunk_hash(read.index)
                .unwrap_or(Digest([0; 32])),
            cancelled: false,
            done: None,
        });
        Some(read)
    }

    /// The next text or piece to send, never a read. Same rule as `poll_output`.
    pub fn poll_send(&mut self) -> Option<Output> {
        if let Some(t) = self.texts.pop_front() {
            return Some(Output::Text(t));
        }
        self.next_to_send();
        if let Some(s) = &mut self.sending {
            let end = (s.sent + self.piece_size).min(s.data.len());
            let header = PieceHeader {
                offset: s.sent as u32,
                ..s.header
            };
            let frame = header.frame(&s.data[s.sent..end]);
            s.sent = end;
            if end == s.data.len() {
                self.sending = None;
            }
            return Some(Output::Piece(frame));
        }
        None
    }
}

fn not_found(id: Digest, index: Option<u32>) -> Message {
    let text = if index.is_some() {
        "this peer does not have that chunk"
    } else {
        "this peer does not have that manifest"
    };
    Message::error_at(ErrorCode::NotFound, text, id, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::chunks::manifest::Chunker;
    use crate::core::chunks::wire::Bitfield;

    struct Lib(Arc<Manifest>, Option<Bitfield>);
    impl Library for Lib {
        fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
            (*id == self.0.id()).then(|| self.0.clone())
        }
        fn holding(&self, id: &Digest) -> Option<Holding> {
            self.manifest(id)?;
            Some(self.1.clone().map_or(Holding::All, Holding::Some))
        }
    }

    fn setup() -> (Vec<u8>, Lib) {
        let data: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let mut c = Chunker::new(40);
        c.push(&data);
        (data, Lib(Arc::new(c.finish("f").unwrap()), None))
    }

    fn req(lib: &Lib, index: u32) -> Message {
        Message::RequestChunk {
            manifest: lib.0.id(),
            index,
            hash: lib.0.chunks()[index as usize],
        }
    }

    fn text(o: Option<Output>) -> Message {
        match o {
            Some(Output::Text(t)) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn code(m: &Message) -> ErrorCode {
        match m {
            Message::Error { code, .. } => *code,
            other => panic!("expected error, got {other:?}"),
        }
    }

    #[test]
    fn serves_chunks_in_pieces_one_read_at_a_time() {
        let (data, lib) = setup();
        let mut s = Seeder::new(4).with_piece_size(16);
        assert_eq!(s.handle_message(&req(&lib, 2), &lib), Handled::Consumed);
        assert_eq!(s.handle_message(&req(&lib, 0), &lib), Handled::Consumed);
        let Some(Output::Read(r)) = s.poll_output() else {
            panic!()
        };
        assert_eq!(r.index, 2);
        // No second read, no piece, until the first read is back.
        assert!(s.poll_output().is_none());
        s.chunk_read(&r, Some(data[80..].to_vec()));
        let Some(Output::Piece(p)) = s.poll_output() else {
            panic!()
        };
        let (h, payload) = PieceHeader::decode(&p).unwrap();
        assert_eq!(
            (h.index, h.offset, h.chunk_len, payload),
            (2, 0, 20, &data[80..96])
        );
        let Some(Output::Piece(p)) = s.poll_output() else {
            panic!()
        };
        let (h, payload) = PieceHeader::decode(&p).unwrap();
        assert_eq!((h.offset, payload), (16, &data[96..100]));
        let Some(Output::Read(r)) = s.poll_output() else {
            panic!()
        };
        assert_eq!(r.index, 0);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn reads_ahead_within_its_bound_and_sends_in_request_order() {
        let (data, lib) = setup();
        let bytes = |i: usize| data[i * 40..((i + 1) * 40).min(100)].to_vec();
        let mut s = Seeder::new(4).with_read_ahead(2).with_piece_size(64);
        for i in [2, 0, 1] {
            s.handle_message(&req(&lib, i), &lib);
        }
        // Two reads at once, never a third, while nothing has come back.
        let r2 = s.poll_read().unwrap();
        let r0 = s.poll_read().unwrap();
        assert_eq!((r2.index, r0.index), (2, 0));
        assert!(s.poll_read().is_none());
        assert!(s.poll_output().is_none());
        assert_eq!(s.reads_held(), 2);
        // The second read comes back first: it waits for the first, in request order.
        s.chunk_read(&r0, Some(bytes(0)));
        assert!(s.poll_send().is_none());
        assert!(
            s.poll_read().is_none(),
            "a chunk back and waiting still holds its place"
        );
        s.chunk_read(&r2, Some(bytes(2)));
        let Some(Output::Piece(p)) = s.poll_send() else {
            panic!()
        };
        assert_eq!(PieceHeader::decode(&p).unwrap().0.index, 2);
        // Chunk 2 is being sent: one place is free, and chunk 1's read is asked for.
        assert_eq!(s.reads_held(), 1);
        let r1 = s.poll_read().unwrap();
        assert_eq!(r1.index, 1);
        assert!(s.poll_read().is_none());
        let Some(Output::Piece(p)) = s.poll_send() else {
            panic!()
        };
        let (h, payload) = PieceHeader::decode(&p).unwrap();
        assert_eq!((h.index, payload), (0, &data[..40]));
        // A cancelled read still holds its place until its bytes are back, then frees it.
        s.handle_message(
            &Message::Cancel {
                manifest: lib.0.id(),
                index: 1,
            },
            &lib,
        );
        assert_eq!((s.outstanding(), s.reads_held()), (0, 1));
        s.chunk_read(&r1, Some(bytes(1)));
        assert_eq!(s.reads_held(), 0);
        assert!(s.poll_output().is_none());
        // A failed read says not_found and frees its place.
        s.handle_message(&req(&lib, 1), &lib);
        let r1 = s.poll_read().unwrap();
        s.chunk_read(&r1, None);
        assert_eq!(code(&text(s.poll_send())), ErrorCode::NotFound);
        assert_eq!((s.outstanding(), s.reads_held()), (0, 0));
    }

    #[test]
    fn answers_query_manifest_and_errors() {
        let (_, mut lib) = setup();
        let mut s = Seeder::new(1);
        let id = lib.0.id();
        s.handle_message(&Message::Query { manifest: id }, &lib);
        assert_eq!(text(s.poll_output()), Message::have(id, &Holding::All));
        s.handle_message(&Message::GetManifest { manifest: id }, &lib);
        assert_eq!(
            text(s.poll_output()),
            Message::Manifest(Box::new(lib.0.to_json()))
        );
        let other = Digest([9; 32]);
        s.handle_message(&Message::Query { manifest: other }, &lib);
        assert_eq!(code(&text(s.poll_output())), ErrorCode::NotFound);
        s.handle_message(
            &Message::RequestChunk {
                manifest: id,
                index: 1,
                hash: other,
            },
            &lib,
        );
        assert_eq!(code(&text(s.poll_output())), ErrorCode::BadRequest);
        s.handle_message(&req(&lib, 0), &lib);
        s.handle_message(&req(&lib, 0), &lib);
        assert_eq!(code(&text(s.poll_output())), ErrorCode::BadRequest);
        s.handle_message(&req(&lib, 1), &lib);
        assert_eq!(code(&text(s.poll_output())), ErrorCode::Busy);
        // A partial holder says which chunks it has and refuses the others.
        let mut b = Bitfield::new(3);
        b.set(1);
        lib.1 = Some(b.clone());
        let mut s = Seeder::new(4);
        s.handle_message(&Message::Query { manifest: id }, &lib);
        assert_eq!(text(s.poll_output()), Message::have(id, &Holding::Some(b)));
        s.handle_message(&req(&lib, 0), &lib);
        assert_eq!(code(&text(s.poll_output())), ErrorCode::NotFound);
        assert_eq!(
            s.handle_message(&Message::Announce { manifests: vec![] }, &lib),
            Handled::NotMine
        );
    }

    #[test]
    fn cancel_drops_queued_reading_and_sending() {
        let (data, lib) = setup();
        let id = lib.0.id();
        let mut s = Seeder::new(4).with_piece_size(16);
        for i in 0..3 {
            s.handle_message(&req(&lib, i), &lib);
        }
        let Some(Output::Read(r0)) = s.poll_output() else {
            panic!()
        };
        s.handle_message(
            &Message::Cancel {
                manifest: id,
                index: 0,
            },
            &lib,
        );
        s.handle_message(
            &Message::Cancel {
                manifest: id,
                index: 1,
            },
            &lib,
        );
        // The cancelled read's bytes are thrown away; the next read is chunk 2.
        assert!(s.poll_output().is_none());
        s.chunk_read(&r0, Some(data[..40].to_vec()));
        let Some(Output::Read(r2)) = s.poll_output() else {
            panic!()
        };
        assert_eq!(r2.index, 2);
        s.chunk_read(&r2, Some(data[80..].to_vec()));
        assert!(matches!(s.poll_output(), Some(Output::Piece(_))));
        s.handle_message(
            &Message::Cancel {
                manifest: id,
                index: 2,
            },
            &lib,
        );
        assert!(s.poll_output().is_none());
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_changed_file_is_refused_not_sent() {
        let (_, lib) = setup();
        let mut s = Seeder::new(4);
        s.handle_message(&req(&lib, 0), &lib);
        let Some(Output::Read(r)) = s.poll_output() else {
            panic!()
        };
        s.chunk_read(&r, Some(vec![0; 40]));
        assert_eq!(code(&text(s.poll_output())), ErrorCode::NotFound);
        s.handle_message(&req(&lib, 1), &lib);
        let Some(Output::Read(r)) = s.poll_output() else {
            panic!()
        };
        s.chunk_read(&r, None);
        assert_eq!(code(&text(s.poll_output())), ErrorCode::NotFound);
        assert!(s.poll_output().is_none());
    }

    #[test]
    fn a_peer_that_never_reads_answers_is_flooded() {
        let (_, lib) = setup();
        let mut s = Seeder::new(2);
        let q = Message::Query {
            manifest: lib.0.id(),
        };
        let results: Vec<Handled> = (0..40).map(|_| s.handle_message(&q, &lib)).collect();
        assert_eq!(
            results.iter().filter(|h| **h == Handled::Consumed).count(),
            18
        );
        assert_eq!(results.last(), Some(&Handled::Flooded));
    }
}
