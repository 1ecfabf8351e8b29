//! Relay inboxes on disk: a send left on the box for a device that was away, under
//! `.lanvan/inbox/` as `KEY.part` (the bytes) and `KEY.json` (its `InboxEntry`, written
//! last, after the bytes are fsynced and their SHA-256 checked). A `.part` without its
//! `.json` is a send that was never finished and is deleted at start.
//! Runs on the loop; every file operation goes to the disk thread.

use super::disk::Disk;
use super::write_atomically;
use crate::core::hash::Digest;
use crate::core::relay::InboxEntry;
use sha2::Digest as _;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The inbox folder and the running hashes of inbox files being written.
pub struct Inbox {
    dir: PathBuf,
    disk: Disk,
    /// One per inbox file being written (bounded by `relay.max_inbox`). Chunks are written
    /// in order, one at a time per file, so each hash is fed in file order.
    hashers: RefCell<HashMap<String, sha2::Sha256>>,
}

impl Inbox {
    /// Opens (creating) `root/.lanvan/inbox` and returns the entries stored there.
    /// Blocking: call before the loop starts.
    pub fn open(root: &Path, disk: Disk) -> io::Result<(Inbox, Vec<InboxEntry>)> {
        let dir = root.join(".lanvan").join("inbox");
        fs::create_dir_all(&dir)?;
        let mut entries = Vec::new();
        for dirent in fs::read_dir(&dir)? {
            let path = dirent?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    let entry: Option<InboxEntry> = fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    match entry {
                        Some(e) if path.with_extension("part").is_file() && valid_key(&e.key) => {
                            entries.push(e)
                        }
                        _ => {
                            let _ = fs::remove_file(&path);
                            let _ = fs::remove_file(path.with_extension("part"));
                        }
                    }
                }
                Some("part") if !path.with_extension("json").is_file() => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        entries.sort_by_key(|e| e.stored_at);
        Ok((
            Inbox {
                dir,
                disk,
                hashers: RefCell::default(),
            },
            entries,
        ))
    }

    fn part(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.part"))
    }

    /// Creates the empty file for a new inbox send.
    pub async fn create(&self, key: &str) -> io::Result<()> {
        let path = self.part(key);
        self.disk.run(move || File::create(path).map(drop)).await?;
        self.hashers
            .borrow_mut()
            .insert(key.to_owned(), sha2::Sha256::new());
        Ok(())
    }

    /// Writes one chunk at `offset` and feeds it to the file's hash.
    pub async fn write(&self, key: &str, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
        let mut hasher = self
            .hashers
            .borrow_mut()
            .remove(key)
            .ok_or_else(|| io::Error::other("inbox file is not open"))?;
        let path = self.part(key);
        let (result, hasher) = self
            .disk
            .run(move || {
                let r = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.write_all_at(&bytes, offset));
                if r.is_ok() {
                    hasher.update(&bytes);
                }
                (r, hasher)
            })
            .await;
        self.hashers.borrow_mut().insert(key.to_owned(), hasher);
        result
    }

    /// Fsyncs the file and returns its SHA-256; if it is `entry.sha256`, records `entry`
    /// (the file is then an inbox send that survives restarts).
    pub async fn finish(&self, entry: InboxEntry) -> io::Result<Digest> {
        let hasher = self
            .hashers
            .borrow_mut()
            .remove(&entry.key)
            .ok_or_else(|| io::Error::other("inbox file is not open"))?;
        let part = self.part(&entry.key);
        let json = self.dir.join(format!("{}.json", entry.key));
        self.disk
            .run(move || {
                File::open(&part)?.sync_all()?;
                let got = Digest(hasher.finalize().into());
                if Some(got) == Digest::from_hex(&entry.sha256) {
                    let bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
                    write_atomically(&json, &bytes)?;
                }
                Ok(got)
            })
            .await
    }

    /// Reads `len` bytes at `offset` of a stored send.
    pub async fn read(&self, key: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let path = self.part(key);
        self.disk
            .run(move || {
                let mut buf = vec![0u8; len];
                File::open(path)?.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            })
            .await
    }

    /// Deletes a stored or half-stored send.
    pub async fn delete(&self, key: &str) {
        self.hashers.borrow_mut().remove(key);
        let (part, json) = (self.part(key), self.dir.join(format!("{key}.json")));
        self.disk
            .run(move || {
                let _ = fs::remove_file(json);
                let _ = fs::remove_file(part);
            })
            .await;
    }
}

/// Keys name files: 16 lowercase hex digits, nothing else.
fn valid_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
}
