//! The content-addressed chunk protocol (SPEC8 §1, §4), sans-IO: manifests, the wire of a
//! `lanvan-chunks` data channel, the serving side of one channel and the multi-source
//! downloader. Nothing here touches a channel, a file or the clock.
//!
//! # API overview
//!
//! - [`manifest`]: [`Manifest`] (validated; `id()` is the manifest hash), [`ManifestJson`]
//!   (the JSON form; `Manifest::from_json` checks the hash), [`Chunker`] (feed a file's
//!   bytes, get its manifest).
//! - [`wire`]: [`Message`] (text messages, serde-tagged `t`; `Message::parse` turns bad
//!   input into the `error` `bad_request` to send back), [`PieceHeader`] (the 48-byte
//!   binary header; `frame`/`decode`), [`Bitfield`] (base64 for `have`).
//! - [`seeder`]: [`Seeder`], one per channel, serving from a [`Library`] (manifest lookup):
//!   `handle_message(&msg, &lib)` → `Handled`; `poll_output()` → `Text` to send, `Piece`
//!   to send, or `Read` (read that chunk, off the loop if you like, then
//!   `chunk_read(&read, bytes)`). Call `poll_output` only while the channel has room:
//!   it holds one chunk at most, so memory per channel is one chunk.
//! - [`swarm`]: [`Swarm`], one per download, over many sources named by [`SourceId`]:
//!   `add_source(id, now)` once a channel is open (it queues a `query`),
//!   `handle_message(id, &msg, now)`, `handle_piece(id, &frame, now)`,
//!   `remove_source(id, now)` when the channel is gone, `handle_timeout(now)` at
//!   `poll_timeout()`. After each input drain `poll_transmit()` → `(SourceId, Message)` to
//!   send and `poll_event()` → `Verified { index, data }` (write at
//!   `manifest.chunk_offset(index)`), `SourceDropped { source, reason }` (close it),
//!   `Done`. `progress()` is the one number across sources (bytes, chunks, serving).
//!
//! A peer that both serves and downloads on one channel gives each text message to its
//! `Seeder` first; what comes back `NotMine` goes to the `Swarm` whose manifest it names.
//! Binary frames go to the swarm for which `wants_piece(&header)` holds.
//!
//! ```
//! use lanvan::core::chunks::{Chunker, Swarm, SourceId, Seeder, Library, Manifest, Message};
//! use lanvan::core::chunks::seeder::Output;
//! use lanvan::core::hash::Digest;
//! use std::sync::Arc;
//! use std::time::Instant;
//!
//! let data = vec![7u8; 1000];
//! let mut c = Chunker::new(256);
//! c.push(&data);
//! let m = Arc::new(c.finish("a.bin").unwrap());
//! struct One(Arc<Manifest>);
//! impl Library for One {
//!     fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
//!         (*id == self.0.id()).then(|| self.0.clone())
//!     }
//! }
//! let lib = One(m.clone());
//! let (now, src) = (Instant::now(), SourceId(1));
//! let mut swarm = Swarm::new(m.clone(), None);
//! let mut seeder = Seeder::new(16);
//! swarm.add_source(src, now);
//! let mut out = vec![0u8; 1000];
//! while !swarm.is_done() {
//!     while let Some((_, msg)) = swarm.poll_transmit() {
//!         seeder.handle_message(&Message::parse(&msg.to_text()).unwrap(), &lib);
//!     }
//!     while let Some(o) = seeder.poll_output() {
//!         match o {
//!             Output::Text(t) => swarm.handle_message(src, &t, now),
//!             Output::Piece(p) => swarm.handle_piece(src, &p, now),
//!             Output::Read(r) => {
//!                 let at = r.manifest.chunk_offset(r.index) as usize;
//!                 let len = r.manifest.chunk_len(r.index) as usize;
//!                 seeder.chunk_read(&r, Some(data[at..at + len].to_vec()));
//!             }
//!         }
//!     }
//!     while let Some(e) = swarm.poll_event() {
//!         if let lanvan::core::chunks::Event::Verified { index, data } = e {
//!             let at = m.chunk_offset(index) as usize;
//!             out[at..at + data.len()].copy_from_slice(&data);
//!         }
//!     }
//! }
//! assert_eq!(out, data);
//! ```

pub mod manifest;
pub mod seeder;
pub mod swarm;
pub mod wire;

pub use manifest::{Chunker, Manifest, ManifestError, ManifestJson};
pub use seeder::{Library, Seeder};
pub use swarm::{DropReason, Event, Progress, SourceId, Swarm};
pub use wire::{Bitfield, ErrorCode, Holding, Message, PieceHeader, Role};
