//! The relay's shell: feeds relay frames from WebSockets into the sans-IO
//! [`Relay`](crate::core::relay::Relay), queues what it answers (text, and chunk frames
//! read from the ring only when the writer sends them), runs its timers, and carries out
//! inbox file work on the disk thread through one worker task. Never blocks the loop.

use super::server::{App, Outbound};
use crate::config::Config;
use crate::core::hub::ConnId;
use crate::core::relay::{encode_header, InboxEntry, Relay, RelayLimits, RelayOutput, TransferId};
use crate::store::disk::Disk;
use crate::store::inbox::Inbox;
use std::rc::Rc;
use std::time::Duration;

/// Inbox file work for the worker task. At most one per transfer is under way (the relay
/// waits for each answer) plus deletes, so the queue is bounded by
/// `relay.max_transfers + relay.max_inbox`.
pub enum InboxJob {
    Open {
        id: TransferId,
        key: String,
    },
    Write {
        id: TransferId,
        key: String,
        index: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    Finish {
        id: TransferId,
        entry: InboxEntry,
    },
    Read {
        id: TransferId,
        key: String,
        index: u32,
        offset: u64,
        len: usize,
    },
    Delete {
        key: String,
    },
}

/// The relay's parts for `App`: the state machine (with its ring allocated now), the inbox
/// folder, and the worker queue.
pub fn build(
    cfg: &Config,
    disk: Disk,
) -> std::io::Result<(
    Relay,
    Inbox,
    smol::channel::Sender<InboxJob>,
    smol::channel::Receiver<InboxJob>,
)> {
    let r = &cfg.relay;
    let (inbox, entries) = Inbox::open(&cfg.data_dir, disk)?;
    if !entries.is_empty() {
        log::info!("{} relay sends wait in inboxes", entries.len());
    }
    let limits = RelayLimits {
        chunk_size: r.chunk_size as usize,
        slots: r.slots(),
        max_transfers: r.max_transfers,
        max_per_device: r.max_transfers_per_device,
        grace: Duration::from_secs(r.grace_secs),
        offer_timeout: Duration::from_secs(r.offer_timeout_secs),
        inbox_ttl_ms: r.inbox_ttl_secs.saturating_mul(1000),
        max_inbox: r.max_inbox,
        max_auto_accept: r.max_auto_accept,
    };
    let seed = random_seed();
    let relay = Relay::new(limits, entries, seed);
    let (tx, rx) = smol::channel::bounded(r.max_transfers + r.max_inbox + 16);
    Ok((relay, inbox, tx, rx))
}

fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) ^ crate::store::unix_ms()
}

impl App {
    /// A device's socket joined the hub: the relay resumes and offers what waits for it.
    pub fn relay_connect(&self, conn: ConnId, device: &str) {
        let name = self
            .hub
            .borrow()
            .device_name(device)
            .unwrap_or(device)
            .to_owned();
        let mut out = Vec::new();
        self.relay
            .borrow_mut()
            .connect(self.now(), conn, device, &name, &mut out);
        self.dispatch_relay(out);
    }

    /// Offers a text frame to the relay; false if it is not a relay message.
    pub fn relay_text(&self, conn: ConnId, text: &str) -> bool {
        let mut out = Vec::new();
        let taken = self
            .relay
            .borrow_mut()
            .receive_text(self.now(), conn, text, &mut out);
        if taken {
            self.hub.borrow_mut().heard_from(self.now(), conn);
            self.dispatch_relay(out);
        }
        taken
    }

    /// A binary frame: a relay chunk.
    pub fn relay_chunk(&self, conn: ConnId, frame: &[u8]) {
        self.hub.borrow_mut().heard_from(self.now(), conn);
        let mut out = Vec::new();
        self.relay
            .borrow_mut()
            .receive_chunk(self.now(), conn, frame, &mut out);
        self.dispatch_relay(out);
    }

    pub fn relay_disconnect(&self, conn: ConnId) {
        let mut out = Vec::new();
        self.relay
            .borrow_mut()
            .disconnect(self.now(), conn, &mut out);
        self.dispatch_relay(out);
    }

    /// The binary frame for chunk `index` of transfer `id`, copied from the ring as the
    /// writer sends it; None if the ring no longer holds it (cancelled or rewound).
    pub fn chunk_frame(&self, id: TransferId, index: u32) -> Option<Vec<u8>> {
        let relay = self.relay.borrow();
        let bytes = relay.chunk(id, index)?;
        let mut frame = Vec::with_capacity(bytes.len() + 8);
        frame.extend_from_slice(&encode_header(id, index));
        frame.extend_from_slice(bytes);
        Some(frame)
    }

    /// Carries out what the relay asked. A socket whose queue is full is dropped, as the
    /// hub's are, and both the hub and the relay are told.
    pub fn dispatch_relay(&self, mut out: Vec<RelayOutput>) {
        while !out.is_empty() {
            let mut more = Vec::new();
            for o in out.drain(..) {
                let queued = match o {
                    RelayOutput::Send { conn, text } => (conn, self.send_to(conn, text)),
                    RelayOutput::Chunk { conn, id, index } => {
                        let ok = match self.sockets.borrow().get(&conn) {
                            Some(tx) => tx.try_send(Outbound::Chunk(id, index)).is_ok(),
                            None => true,
                        };
                        (conn, ok)
                    }
                    RelayOutput::InboxOpen { id, key, size } => {
                        self.store
                            .external_bytes
                            .set(self.relay.borrow().inbox_bytes().saturating_sub(size));
                        let room = self.store.check_space(size).map_err(|e| e.to_string());
                        self.store
                            .external_bytes
                            .set(self.relay.borrow().inbox_bytes());
                        match room {
                            Ok(()) => self.inbox_job(InboxJob::Open { id, key }),
                            Err(why) => {
                                self.relay
                                    .borrow_mut()
                                    .inbox_opened(id, Err(why), &mut more)
                            }
                        }
                        continue;
                    }
                    RelayOutput::InboxWrite {
                        id,
                        key,
                        index,
                        offset,
                    } => {
                        let bytes = self.relay.borrow().chunk(id, index).map(<[u8]>::to_vec);
                        match bytes {
                            Some(bytes) => self.inbox_job(InboxJob::Write {
                                id,
                                key,
                                index,
                                offset,
                                bytes,
                            }),
                            None => self.relay.borrow_mut().inbox_written(
                                id,
                                index,
                                Err("chunk vanished".into()),
                                &mut more,
                            ),
                        }
                        continue;
                    }
                    RelayOutput::InboxFinish { id, entry } => {
                        self.inbox_job(InboxJob::Finish { id, entry });
                        continue;
                    }
                    RelayOutput::InboxRead {
                        id,
                        key,
                        index,
                        offset,
                        len,
                    } => {
                        self.inbox_job(InboxJob::Read {
                            id,
                            key,
                            index,
                            offset,
                            len,
                        });
                        continue;
                    }
                    RelayOutput::InboxDelete { key } => {
                        self.inbox_job(InboxJob::Delete { key });
                        continue;
                    }
                };
                if let (conn, false) = queued {
                    log::info!("dropping device on socket {conn}: it stopped reading");
                    self.sockets.borrow_mut().remove(&conn);
                    let mut hub_out = Vec::new();
                    self.hub
                        .borrow_mut()
                        .disconnect(self.now(), conn, &mut hub_out);
                    self.dispatch(hub_out);
                    self.relay
                        .borrow_mut()
                        .disconnect(self.now(), conn, &mut more);
                }
            }
            out = more;
        }
        self.store
            .external_bytes
            .set(self.relay.borrow().inbox_bytes());
    }

    fn inbox_job(&self, job: InboxJob) {
        if self.inbox_jobs.try_send(job).is_err() {
            // Cannot happen while the relay keeps one job per transfer; say so if it does.
            log::error!("relay inbox queue is full; a job was dropped");
        }
    }
}

/// Runs inbox file work one job at a time (the disk thread does them in order anyway)
/// and hands each answer back to the relay.
pub async fn inbox_worker(app: Rc<App>, jobs: smol::channel::Receiver<InboxJob>) {
    while let Ok(job) = jobs.recv().await {
        let mut out = Vec::new();
        match job {
            InboxJob::Open { id, key } => {
                let r = app.inbox.create(&key).await.map_err(|e| e.to_string());
                app.relay.borrow_mut().inbox_opened(id, r, &mut out);
            }
            InboxJob::Write {
                id,
                key,
                index,
                offset,
                bytes,
            } => {
                let r = app
                    .inbox
                    .write(&key, offset, bytes)
                    .await
                    .map_err(|e| e.to_string());
                app.relay.borrow_mut().inbox_written(id, index, r, &mut out);
            }
            InboxJob::Finish { id, mut entry } => {
                // Stamped before it is written, so the record on disk has its time.
                entry.stored_at = crate::store::unix_ms();
                let r = app
                    .inbox
                    .finish(entry.clone())
                    .await
                    .map_err(|e| e.to_string());
                app.relay
                    .borrow_mut()
                    .inbox_stored(app.now(), id, entry, r, &mut out);
            }
            InboxJob::Read {
                id,
                key,
                index,
                offset,
                len,
            } => {
                let r = app
                    .inbox
                    .read(&key, offset, len)
                    .await
                    .map_err(|e| e.to_string());
                app.relay.borrow_mut().inbox_chunk(id, index, r, &mut out);
            }
            InboxJob::Delete { key } => app.inbox.delete(&key).await,
        }
        app.dispatch_relay(out);
    }
}

/// Offer deadlines, grace periods and inbox expiry (an offer may time out up to 1 s late).
pub async fn relay_timers(app: Rc<App>) {
    super::server::drive_timers(
        || app.relay.borrow().poll_timeout(app.now()),
        || {
            let mut out = Vec::new();
            app.relay.borrow_mut().handle_timeout(app.now(), &mut out);
            app.dispatch_relay(out);
        },
    )
    .await
}
