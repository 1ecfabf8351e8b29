//! The drop-box on disk: finished files under `files/`, unfinished uploads under
//! `.lanvan/uploads/` (a sparse `.part` file, a chunk journal and a small JSON header).
//! Lives on the event loop; every blocking file operation goes through the `Disk` thread.
//! A final name exists only after the whole file is hashed, fsynced and renamed into place.

pub mod disk;
pub mod inbox;
pub mod manifest;

use crate::config::StoreConfig;
use crate::core::chunks::Manifest;
use crate::core::hash::Digest;
use crate::core::names;
use crate::core::upload::{self, ChunkSet, Plan};
use disk::Disk;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A stored file as clients see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
    /// Unix time in milliseconds when the file was stored.
    pub modified: u64,
    /// Name of the device that uploaded it, if known.
    pub uploaded_by: Option<String>,
}

/// What went wrong, in terms a client can act on. `net::api` turns these into replies.
#[derive(Debug)]
pub enum StoreError {
    BadName(&'static str),
    FileNotFound,
    UploadNotFound,
    TooLarge {
        max_size: u64,
    },
    NoSpace {
        needed: u64,
        available: u64,
    },
    QuotaExceeded {
        needed: u64,
        quota: u64,
        used: u64,
    },
    TooManyUploads {
        max: usize,
    },
    TooManyFiles {
        max: usize,
    },
    ChunkOutOfRange {
        index: u32,
        chunks: u32,
    },
    WrongChunkLength {
        index: u32,
        expected: u64,
        got: u64,
    },
    ChunkHashMismatch {
        index: u32,
        expected: Digest,
        actual: Digest,
    },
    FileHashMismatch {
        expected: Digest,
        actual: Digest,
    },
    Incomplete {
        missing: Vec<[u32; 2]>,
    },
    Busy,
    DiskFull,
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use StoreError::*;
        match self {
            BadName(why) => write!(f, "that file name cannot be used: {why}"),
            FileNotFound => write!(f, "no such file on the box"),
            UploadNotFound => write!(f, "no such upload; it may have finished, expired or been cancelled"),
            TooLarge { max_size } => write!(f, "the file is too large; the box takes files up to {max_size} bytes"),
            NoSpace { needed, available } => write!(f, "not enough free space on the box: {needed} bytes needed, {available} available"),
            QuotaExceeded { needed, quota, used } => write!(f, "the box's quota is full: {needed} bytes needed, {used} of {quota} bytes used"),
            TooManyUploads { max } => write!(f, "the box already has {max} unfinished uploads; finish or cancel some first"),
            TooManyFiles { max } => write!(f, "the box already holds {max} files; delete some first"),
            ChunkOutOfRange { index, chunks } => write!(f, "chunk {index} is beyond the end of the upload, which has {chunks} chunks"),
            WrongChunkLength { index, expected, got } => write!(f, "chunk {index} must be {expected} bytes long, got {got}"),
            ChunkHashMismatch { index, expected, actual } => write!(f, "chunk {index} was damaged on the way: expected SHA-256 {expected}, received bytes hash to {actual}; send it again"),
            FileHashMismatch { expected, actual } => write!(f, "the whole file hashes to {actual}, not the declared {expected}; the upload was discarded, start it again"),
            Incomplete { missing } => write!(f, "the upload still misses chunks {missing:?}"),
            Busy => write!(f, "the upload is being finished; try again in a moment"),
            DiskFull => write!(f, "the box's disk is full; the upload is kept and can resume once space is freed"),
            Io(e) => write!(f, "disk error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if is_disk_full(&e) {
            StoreError::DiskFull
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_enospc) if libc_enospc == nix::errno::Errno::ENOSPC as i32 || libc_enospc == nix::errno::Errno::EDQUOT as i32)
}

/// A client's request to start (or resume) an upload.
#[derive(Debug, Deserialize)]
pub struct NewUpload {
    pub name: String,
    pub size: u64,
    pub sha256: Option<Digest>,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
}

/// An unfinished upload as clients see it.
#[derive(Debug, Serialize)]
pub struct UploadStatus {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: u32,
    pub received_chunks: u32,
    /// Half-open ranges `[start, end)` of chunk indexes still to send.
    pub missing: Vec<[u32; 2]>,
    pub sha256: Option<Digest>,
}

/// Answer to a new upload: either an upload to send chunks to, or the file is already here.
#[derive(Debug)]
pub enum Created {
    New(UploadStatus),
    Resumed(UploadStatus),
    AlreadyStored(FileEntry),
}

/// What `finish` produced.
#[derive(Debug)]
pub struct Finished {
    pub file: FileEntry,
    /// True when identical bytes were already stored and no new file was made.
    pub deduplicated: bool,
}

/// The JSON header of an unfinished upload, kept beside its part file.
#[derive(Debug, Serialize, Deserialize)]
struct UploadHeader {
    id: String,
    name: String,
    size: u64,
    chunk_size: u64,
    sha256: Option<Digest>,
    device_id: Option<String>,
    device_name: Option<String>,
    created: u64,
}

/// The whole file's SHA-256, built on the disk thread in chunk order whatever order the
/// chunks arrive in: the chunk that fills the gap at `next` is fed from memory, then every
/// chunk already stored behind it is read back (from the page cache) and fed. So each byte
/// is hashed once here, and `finish` has nothing left to read. Only the disk thread locks it.
struct FileHash {
    hasher: sha2::Sha256,
    /// Chunks `0..next` are in `hasher`.
    next: u32,
    /// Chunks on disk, as the disk thread knows them.
    stored: ChunkSet,
    /// A read-back failed: `finish` hashes the whole file again instead.
    broken: bool,
}

impl FileHash {
    fn new(chunks: u32) -> FileHash {
        FileHash {
            hasher: sha2::Sha256::new(),
            next: 0,
            stored: ChunkSet::new(chunks),
            broken: false,
        }
    }

    /// Chunk `index`, holding `data`, is on disk.
    fn add(&mut self, index: u32, data: &[u8], part: &File, plan: &Plan) {
        self.stored.insert(index);
        if index == self.next && !self.broken {
            self.hasher.update(data);
            self.next += 1;
            if let Err(e) = self.catch_up(part, plan) {
                log::warn!("reading a chunk back failed ({e}); the file is hashed at finish");
                self.broken = true;
            }
        }
    }

    /// Feeds every stored chunk from `next` on, up to the first gap.
    fn catch_up(&mut self, part: &File, plan: &Plan) -> io::Result<()> {
        let mut buf = Vec::new();
        while self.stored.contains(self.next) {
            buf.resize(plan.chunk_len(self.next).unwrap_or(0) as usize, 0);
            part.read_exact_at(&mut buf, plan.offset(self.next))?;
            self.hasher.update(&buf);
            self.next += 1;
        }
        Ok(())
    }

    /// The digest of the whole part file. Leaves the hash spent (`broken`), so a finish
    /// that fails later and is tried again hashes from the start.
    fn finish(&mut self, part: &File, plan: &Plan) -> io::Result<Digest> {
        if self.broken {
            self.hasher = sha2::Sha256::new();
            self.next = 0;
        }
        self.broken = true;
        let mut hasher = std::mem::take(&mut self.hasher);
        feed_from(part, plan.offset(self.next).min(plan.size), &mut hasher)?;
        Ok(Digest(hasher.finalize().into()))
    }
}

/// The chunk journal: fixed-size records appended after a chunk's bytes are written.
struct Journal {
    file: File,
    len: u64,
}

impl Journal {
    /// Appends one record. On a short write (disk full) the journal is cut back, so it
    /// never holds a torn record in the middle.
    fn append(&mut self, index: u32, digest: &Digest) -> io::Result<()> {
        let rec = upload::encode_record(index, digest);
        match self.file.write_all_at(&rec, self.len) {
            Ok(()) => {
                self.len += rec.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

struct Upload {
    header: UploadHeader,
    plan: Plan,
    part: Arc<File>,
    journal: Arc<Mutex<Journal>>,
    received: RefCell<ChunkSet>,
    hash: Arc<Mutex<FileHash>>,
    /// Chunk writes under way; finish waits until there are none.
    writing: Cell<u32>,
    finishing: Cell<bool>,
    /// Unix ms of the last chunk stored (or of creation); uploads idle past the time to
    /// live are deleted.
    touched: Cell<u64>,
}

impl Upload {
    fn status(&self) -> UploadStatus {
        let received = self.received.borrow();
        UploadStatus {
            id: self.header.id.clone(),
            name: self.header.name.clone(),
            size: self.plan.size,
            chunk_size: self.plan.chunk_size,
            chunks: self.plan.chunks,
            received_chunks: received.count(),
            missing: received.missing_ranges(),
            sha256: self.header.sha256,
        }
    }

    /// Bytes stored so far: whole chunks, less what the short last chunk lacks.
    fn received_bytes(&self) -> u64 {
        let received = self.received.borrow();
        let plan = &self.plan;
        let mut bytes = u64::from(received.count()) * plan.chunk_size;
        if plan.chunks > 0 && received.contains(plan.chunks - 1) {
            bytes -= plan.chunk_size - plan.chunk_len(plan.chunks - 1).unwrap_or(0);
        }
        bytes
    }
}

/// The drop-box. All methods run on the event loop and borrow its cells only between awaits.
pub struct Store {
    files_dir: PathBuf,
    uploads_dir: PathBuf,
    index_path: PathBuf,
    cfg: StoreConfig,
    disk: Disk,
    files: RefCell<BTreeMap<String, FileEntry>>,
    by_hash: RefCell<HashMap<Digest, String>>,
    uploads: RefCell<HashMap<String, Rc<Upload>>>,
    /// Final names chosen by finishes still under way, so two finishes never pick one name.
    claimed_names: RefCell<HashSet<String>>,
    /// Bounds chunk bodies held in memory at once.
    chunk_slots: smol::lock::Semaphore,
    /// Power saving (a phone on low battery): new uploads get at most this chunk size,
    /// and chunks also take one of `saving_slots`. None: the configured budgets.
    saving: Cell<Option<u64>>,
    saving_slots: smol::lock::Semaphore,
    /// Bytes held outside `files/` and uploads that count against the quota (relay inboxes).
    pub external_bytes: Cell<u64>,
    /// Chunk manifests of stored files (SPEC8 §1), computed on first request.
    manifests: manifest::Manifests,
}

/// Room for one chunk body in memory; held while the chunk is received and stored.
pub struct ChunkSlot<'a> {
    _slot: smol::lock::SemaphoreGuard<'a>,
    _saving: Option<smol::lock::SemaphoreGuard<'a>>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store under `root`, loading the index and every
    /// unfinished upload. Blocking: call before the loop starts serving.
    pub fn open(root: &Path, cfg: StoreConfig, disk: Disk) -> io::Result<Store> {
        let files_dir = root.join("files");
        let meta = root.join(".lanvan");
        let uploads_dir = meta.join("uploads");
        fs::create_dir_all(&files_dir)?;
        fs::create_dir_all(&uploads_dir)?;
        let index_path = meta.join("index.json");
        let cfg_max_cached = cfg.max_cached_manifests;
        let store = Store {
            chunk_slots: smol::lock::Semaphore::new(cfg.max_chunks_in_flight),
            saving: Cell::new(None),
            saving_slots: smol::lock::Semaphore::new(crate::termux::LOW_CHUNKS_IN_FLIGHT),
            files_dir,
            uploads_dir,
            index_path,
            cfg,
            disk,
            files: RefCell::default(),
            by_hash: RefCell::default(),
            uploads: RefCell::default(),
            claimed_names: RefCell::default(),
            external_bytes: Cell::new(0),
            manifests: manifest::Manifests::open(&meta.join("manifests"), cfg_max_cached)?,
        };
        store.load_files()?;
        store.load_uploads()?;
        // Manifests of contents no longer stored (deleted while the box was off).
        let by_hash = store.by_hash.borrow();
        store.manifests.prune(|sha| by_hash.contains_key(sha));
        drop(by_hash);
        Ok(store)
    }

    /// Builds the file list from `files/`, trusting the index for files whose size and
    /// time still match, and hashing any other file (one dropped in by hand, or one whose
    /// finish was cut off before the index was written).
    fn load_files(&self) -> io::Result<()> {
        let index: Vec<FileEntry> = fs::read(&self.index_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut known: HashMap<String, FileEntry> =
            index.into_iter().map(|e| (e.name.clone(), e)).collect();
        let mut files = self.files.borrow_mut();
        let mut by_hash = self.by_hash.borrow_mut();
        let mut rehashed = 0;
        for dirent in fs::read_dir(&self.files_dir)? {
            let dirent = dirent?;
            let meta = dirent.metadata()?;
            let Some(name) = dirent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let entry = match known.remove(&name) {
                // Two seconds of slack for file systems with coarse times (FAT).
                Some(e) if e.size == meta.len() && e.modified.abs_diff(modified) <= 2000 => e,
                old => {
                    rehashed += 1;
                    FileEntry {
                        sha256: hash_file(&dirent.path())?,
                        size: meta.len(),
                        modified,
                        uploaded_by: old.and_then(|e| e.uploaded_by),
                        name: name.clone(),
                    }
                }
            };
            by_hash.entry(entry.sha256).or_insert_with(|| name.clone());
            files.insert(name, entry);
        }
        drop((files, by_hash));
        if rehashed > 0 || !known.is_empty() {
            log::info!("indexed {rehashed} new or changed files");
            write_index(&self.index_path, &self.snapshot())?;
        }
        Ok(())
    }

    /// Reopens every unfinished upload from its header and journal, and deletes the
    /// ones past their time to live.
    fn load_uploads(&self) -> io::Result<()> {
        let ttl_ms = self.cfg.upload_ttl_hours * 3_600_000;
        let now = unix_ms();
        let mut uploads = self.uploads.borrow_mut();
        for dirent in fs::read_dir(&self.uploads_dir)? {
            let path = dirent?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let header: Option<UploadHeader> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(header) = header else {
                log::warn!("removing unreadable upload header {}", path.display());
                remove_upload_files(&path.with_extension(""));
                continue;
            };
            let base = self.uploads_dir.join(&header.id);
            match self.reopen(header, &base) {
                Ok(up) if now.saturating_sub(up.touched.get()) > ttl_ms => {
                    log::info!("upload {} of {:?} expired", up.header.id, up.header.name);
                    remove_upload_files(&base);
                }
                Ok(up) => {
                    uploads.insert(up.header.id.clone(), Rc::new(up));
                }
                Err(e) => {
                    log::warn!("dropping upload {}: {e}", base.display());
                    remove_upload_files(&base);
                }
            }
        }
        // Part files without a header belong to nothing.
        for dirent in fs::read_dir(&self.uploads_dir)? {
            let path = dirent?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !uploads.contains_key(stem) && path.extension().is_some_and(|e| e != "json") {
                let _ = fs::remove_file(&path);
            }
        }
        if !uploads.is_empty() {
            log::info!("{} unfinished uploads can resume", uploads.len());
        }
        Ok(())
    }

    fn reopen(&self, header: UploadHeader, base: &Path) -> io::Result<Upload> {
        let plan = Plan {
            size: header.size,
            chunk_size: header.chunk_size,
            chunks: header.size.div_ceil(header.chunk_size.max(1)) as u32,
        };
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .open(base.with_extension("part"))?;
        let mut journal_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(base.with_extension("journal"))?;
        let mut bytes = Vec::new();
        journal_file.read_to_end(&mut bytes)?;
        let whole = (bytes.len() / upload::RECORD_LEN * upload::RECORD_LEN) as u64;
        journal_file.set_len(whole)?;
        // Trust a journal record only if the bytes on disk still hash to it: after a power
        // cut a record may have reached the disk before the data it describes did.
        // Chunks are checked in index order, so the in-order ones rebuild the file hash
        // on the way.
        let records: BTreeMap<u32, Digest> = upload::decode_records(&bytes)
            .filter(|(i, _)| *i < plan.chunks)
            .collect();
        let mut received = ChunkSet::new(plan.chunks);
        let mut hash = FileHash::new(plan.chunks);
        let mut buf = vec![0u8; plan.chunk_size as usize];
        let mut damaged = 0;
        for (&index, digest) in &records {
            let len = plan.chunk_len(index).unwrap_or(0) as usize;
            let chunk = &mut buf[..len];
            let intact = part.read_exact_at(chunk, plan.offset(index)).is_ok()
                && Digest::of(chunk) == *digest;
            if intact {
                received.insert(index);
                hash.add(index, chunk, &part, &plan);
            } else {
                damaged += 1;
            }
        }
        if damaged > 0 {
            log::warn!(
                "upload {}: {damaged} chunks did not survive on disk and will be asked for again",
                header.id
            );
        }
        let touched = journal_file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(header.created, |d| d.as_millis() as u64)
            .max(header.created);
        Ok(Upload {
            header,
            plan,
            part: Arc::new(part),
            journal: Arc::new(Mutex::new(Journal {
                file: journal_file,
                len: whole,
            })),
            received: RefCell::new(received),
            hash: Arc::new(Mutex::new(hash)),
            writing: Cell::new(0),
            finishing: Cell::new(false),
            touched: Cell::new(touched),
        })
    }

    /// Every stored file, newest first.
    pub fn list(&self) -> Vec<FileEntry> {
        let mut v: Vec<FileEntry> = self.files.borrow().values().cloned().collect();
        v.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.name.cmp(&b.name)));
        v
    }

    pub fn file(&self, name: &str) -> Option<FileEntry> {
        self.files.borrow().get(name).cloned()
    }

    /// Where a stored file lives on disk.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.files_dir.join(name)
    }

    pub fn open_uploads(&self) -> usize {
        self.uploads.borrow().len()
    }

    pub fn upload_status(&self, id: &str) -> Result<UploadStatus, StoreError> {
        Ok(self.upload(id)?.status())
    }

    fn upload(&self, id: &str) -> Result<Rc<Upload>, StoreError> {
        self.uploads
            .borrow()
            .get(id)
            .cloned()
            .ok_or(StoreError::UploadNotFound)
    }

    /// Starts an upload, resumes the matching unfinished one, or, when a file with the
    /// declared SHA-256 is already stored, says so and stores nothing.
    pub async fn create(&self, req: NewUpload) -> Result<Created, StoreError> {
        let name = names::sanitize(&req.name, self.cfg.max_name_bytes)
            .map_err(|e| StoreError::BadName(e.0))?;
        if let Some(sha) = req.sha256 {
            let existing = self.by_hash.borrow().get(&sha).cloned();
            if let Some(entry) = existing.and_then(|n| self.file(&n)) {
                return Ok(Created::AlreadyStored(entry));
            }
        }
        // Resuming needs something that says it is the same file from the same sender:
        // without a device id or a hash, two people's same-sized files could mix.
        let identified = req.device_id.is_some() || req.sha256.is_some();
        let (size, sha256) = (req.size, req.sha256);
        let same = |name: &str, device_id: &Option<String>| {
            self.uploads
                .borrow()
                .values()
                .find(|u| {
                    identified
                        && u.header.name == name
                        && u.header.size == size
                        && u.header.sha256 == sha256
                        && u.header.device_id == *device_id
                })
                .cloned()
        };
        if let Some(up) = same(&name, &req.device_id) {
            return Ok(Created::Resumed(up.status()));
        }
        let plan = Plan::new(
            req.size,
            self.saving
                .get()
                .map_or(self.cfg.chunk_size, |c| c.min(self.cfg.chunk_size)),
            self.cfg.max_chunk_size,
            self.cfg.max_chunks,
        )
        .map_err(|e| StoreError::TooLarge {
            max_size: e.max_size,
        })?;
        if self.uploads.borrow().len() >= self.cfg.max_open_uploads {
            return Err(StoreError::TooManyUploads {
                max: self.cfg.max_open_uploads,
            });
        }
        if self.files.borrow().len() >= self.cfg.max_files {
            return Err(StoreError::TooManyFiles {
                max: self.cfg.max_files,
            });
        }
        self.check_space(req.size)?;

        let id = new_id();
        let header = UploadHeader {
            id: id.clone(),
            name,
            size: req.size,
            chunk_size: plan.chunk_size,
            sha256: req.sha256,
            device_id: req.device_id,
            device_name: req.device_name,
            created: unix_ms(),
        };
        let base = self.uploads_dir.join(&id);
        let made_at = base.clone();
        let header_json = serde_json::to_vec(&header).map_err(|e| StoreError::Io(e.to_string()))?;
        let (part, journal) = self
            .disk
            .run(move || -> io::Result<(File, File)> {
                let made = (|| {
                    let part = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(base.with_extension("part"))?;
                    let journal = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(base.with_extension("journal"))?;
                    write_atomically(&base.with_extension("json"), &header_json)?;
                    Ok((part, journal))
                })();
                if made.is_err() {
                    remove_upload_files(&base);
                }
                made
            })
            .await?;
        // The same request may have come twice at once (a client that retried, a CLI and
        // its user's script): the one that got here first made the upload, so this one
        // resumes it, and its own files go.
        if let Some(up) = same(&header.name, &header.device_id) {
            drop((part, journal));
            self.disk.run(move || remove_upload_files(&made_at)).await;
            return Ok(Created::Resumed(up.status()));
        }
        let up = Upload {
            received: RefCell::new(ChunkSet::new(plan.chunks)),
            hash: Arc::new(Mutex::new(FileHash::new(plan.chunks))),
            header,
            plan,
            part: Arc::new(part),
            journal: Arc::new(Mutex::new(Journal {
                file: journal,
                len: 0,
            })),
            writing: Cell::new(0),
            finishing: Cell::new(false),
            touched: Cell::new(unix_ms()),
        };
        let status = up.status();
        self.uploads.borrow_mut().insert(id, Rc::new(up));
        Ok(Created::New(status))
    }

    /// Refuses an upload of `size` more bytes if the disk or the quota cannot hold it
    /// together with what open uploads still have to write.
    pub fn check_space(&self, size: u64) -> Result<(), StoreError> {
        let pending: u64 = self
            .uploads
            .borrow()
            .values()
            .map(|u| u.plan.size - u.received_bytes())
            .sum();
        let stat = nix::sys::statvfs::statvfs(&self.files_dir)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
        let available = free
            .saturating_sub(pending)
            .saturating_sub(self.cfg.min_free);
        if size > available {
            return Err(StoreError::NoSpace {
                needed: size,
                available,
            });
        }
        if self.cfg.quota > 0 {
            let stored: u64 = self.files.borrow().values().map(|f| f.size).sum();
            let open: u64 = self.uploads.borrow().values().map(|u| u.plan.size).sum();
            let used = stored + open + self.external_bytes.get();
            if used + size > self.cfg.quota {
                return Err(StoreError::QuotaExceeded {
                    needed: size,
                    quota: self.cfg.quota,
                    used,
                });
            }
        }
        Ok(())
    }

    /// Checks that chunk `index` of upload `id` may be sent with `len` bytes, before its
    /// body is read. `Ok(true)` means the chunk is already stored.
    pub fn check_chunk(&self, id: &str, index: u32, len: u64) -> Result<bool, StoreError> {
        let up = self.upload(id)?;
        let expected = up
            .plan
            .chunk_len(index)
            .ok_or(StoreError::ChunkOutOfRange {
                index,
                chunks: up.plan.chunks,
            })?;
        if len != expected {
            return Err(StoreError::WrongChunkLength {
                index,
                expected,
                got: len,
            });
        }
        if up.finishing.get() {
            return Err(StoreError::Busy);
        }
        let stored = up.received.borrow().contains(index);
        Ok(stored)
    }

    /// Waits for room to hold one more chunk body in memory (fewer while saving power).
    pub async fn chunk_slot(&self) -> ChunkSlot<'_> {
        let slot = self.chunk_slots.acquire().await;
        let saving = match self.saving.get() {
            Some(_) => Some(self.saving_slots.acquire().await),
            None => None,
        };
        ChunkSlot {
            _slot: slot,
            _saving: saving,
        }
    }

    /// Saves power (Some(chunk size)) or stops saving (None). Uploads already open keep
    /// their chunk size; chunks already in flight finish.
    pub fn set_power_saving(&self, chunk_size: Option<u64>) {
        self.saving.set(chunk_size);
    }

    /// Stores chunk `index`, whose bytes hash to `actual` (the shell hashes them as they
    /// arrive). Refuses them unless that is `expected`; otherwise, on the disk thread,
    /// writes them in place and records them in the journal, answers, and only then adds
    /// them to the whole-file hash, so the client sends its next chunk meanwhile.
    pub async fn put_chunk(
        &self,
        id: &str,
        index: u32,
        expected: Digest,
        actual: Digest,
        data: Vec<u8>,
    ) -> Result<UploadStatus, StoreError> {
        if actual != expected {
            return Err(StoreError::ChunkHashMismatch {
                index,
                expected,
                actual,
            });
        }
        if self.check_chunk(id, index, data.len() as u64)? {
            return self.upload_status(id);
        }
        let up = self.upload(id)?;
        let plan = up.plan;
        let part = up.part.clone();
        let journal = up.journal.clone();
        let hash = up.hash.clone();
        let (tx, rx) = smol::channel::bounded(1);
        up.writing.set(up.writing.get() + 1);
        self.disk
            .submit(move || {
                let written = part
                    .write_all_at(&data, plan.offset(index))
                    .and_then(|()| journal.lock().expect("journal lock").append(index, &actual));
                let ok = written.is_ok();
                let _ = tx.try_send(written);
                if ok {
                    let mut hash = hash.lock().expect("file hash lock");
                    hash.add(index, &data, &part, &plan);
                }
            })
            .await;
        let written = rx.recv().await.expect("the disk thread dropped a chunk");
        up.writing.set(up.writing.get() - 1);
        written?;
        up.touched.set(unix_ms());
        up.received.borrow_mut().insert(index);
        Ok(up.status())
    }

    /// Completes an upload: takes the whole-file hash built as chunks were stored, checks
    /// the declared SHA-256, fsyncs, and renames the part file to its final
    /// name. If identical bytes are already stored, the part file is dropped instead.
    pub async fn finish(&self, id: &str) -> Result<Finished, StoreError> {
        let up = self.upload(id)?;
        if up.finishing.get() || up.writing.get() > 0 {
            return Err(StoreError::Busy);
        }
        if !up.received.borrow().is_complete() {
            return Err(StoreError::Incomplete {
                missing: up.received.borrow().missing_ranges(),
            });
        }
        up.finishing.set(true);
        let result = self.finish_complete(&up).await;
        up.finishing.set(false);
        match &result {
            Ok(_) => {
                self.uploads.borrow_mut().remove(id);
            }
            // Every chunk matched its own hash, so the bytes are what the client sent, and
            // they will never match the declared hash: keeping them would only fail again.
            Err(StoreError::FileHashMismatch { .. }) => {
                self.uploads.borrow_mut().remove(id);
                let base = self.uploads_dir.join(id);
                self.disk.run(move || remove_upload_files(&base)).await;
            }
            Err(_) => {}
        }
        result
    }

    async fn finish_complete(&self, up: &Upload) -> Result<Finished, StoreError> {
        let (part, hash, plan) = (up.part.clone(), up.hash.clone(), up.plan);
        // Runs behind every chunk job already queued, so the hash is complete but for
        // chunks that could not be read back.
        let actual = self
            .disk
            .run(move || -> io::Result<Digest> {
                let digest = hash.lock().expect("file hash lock").finish(&part, &plan)?;
                part.sync_all()?;
                Ok(digest)
            })
            .await?;
        if let Some(expected) = up.header.sha256.filter(|e| *e != actual) {
            return Err(StoreError::FileHashMismatch { expected, actual });
        }
        let base = self.uploads_dir.join(&up.header.id);
        let existing = self.by_hash.borrow().get(&actual).cloned();
        if let Some(entry) = existing.and_then(|n| self.file(&n)) {
            self.disk.run(move || remove_upload_files(&base)).await;
            return Ok(Finished {
                file: entry,
                deduplicated: true,
            });
        }
        let name = self.claim_name(&up.header.name);
        let entry = FileEntry {
            name: name.clone(),
            size: up.plan.size,
            sha256: actual,
            modified: unix_ms(),
            uploaded_by: up.header.device_name.clone(),
        };
        let target = self.files_dir.join(&name);
        let files_dir = self.files_dir.clone();
        let part = up.part.clone();
        let modified = entry.modified;
        let placed = self
            .disk
            .run(move || -> io::Result<()> {
                // The file's time is the index's time, so a start-up can tell a file
                // changed by hand from the one the index describes.
                part.set_modified(UNIX_EPOCH + std::time::Duration::from_millis(modified))?;
                rename_noreplace(&base.with_extension("part"), &target)?;
                File::open(&files_dir)?.sync_all()?;
                remove_upload_files(&base);
                Ok(())
            })
            .await;
        self.claimed_names.borrow_mut().remove(&name);
        placed?;
        self.files.borrow_mut().insert(name.clone(), entry.clone());
        self.by_hash.borrow_mut().insert(actual, name);
        self.save_index().await;
        Ok(Finished {
            file: entry,
            deduplicated: false,
        })
    }

    /// The requested name, or the first free `name (n)`, reserved until released.
    fn claim_name(&self, wanted: &str) -> String {
        let files = self.files.borrow();
        let mut claimed = self.claimed_names.borrow_mut();
        let taken = |n: &str| {
            files.contains_key(n) || claimed.contains(n) || self.files_dir.join(n).exists()
        };
        let mut name = wanted.to_string();
        let mut n = 1;
        while taken(&name) {
            name = names::numbered(wanted, n, self.cfg.max_name_bytes);
            n += 1;
        }
        claimed.insert(name.clone());
        name
    }

    /// Cancels an unfinished upload and deletes what it had stored.
    pub async fn cancel(&self, id: &str) -> Result<(), StoreError> {
        let up = self.upload(id)?;
        if up.finishing.get() || up.writing.get() > 0 {
            return Err(StoreError::Busy);
        }
        self.uploads.borrow_mut().remove(id);
        let base = self.uploads_dir.join(id);
        self.disk.run(move || remove_upload_files(&base)).await;
        Ok(())
    }

    /// Deletes unfinished uploads that received nothing for `upload_ttl_hours`, so
    /// abandoned uploads do not hold disk space forever. Returns how many went.
    pub async fn expire_uploads(&self) -> usize {
        let ttl_ms = self.cfg.upload_ttl_hours * 3_600_000;
        let now = unix_ms();
        let stale: Vec<String> = self
            .uploads
            .borrow()
            .values()
            .filter(|u| {
                now.saturating_sub(u.touched.get()) > ttl_ms
                    && u.writing.get() == 0
                    && !u.finishing.get()
            })
            .map(|u| u.header.id.clone())
            .collect();
        for id in &stale {
            log::info!(
                "upload {id} expired after {} hours idle",
                self.cfg.upload_ttl_hours
            );
            let _ = self.cancel(id).await;
        }
        stale.len()
    }

    /// Deletes a stored file.
    pub async fn delete(&self, name: &str) -> Result<FileEntry, StoreError> {
        let entry = self.files.borrow_mut().remove(name);
        let entry = entry.ok_or(StoreError::FileNotFound)?;
        {
            let mut by_hash = self.by_hash.borrow_mut();
            if by_hash.get(&entry.sha256).map(String::as_str) == Some(name) {
                // Another stored file with the same bytes (one dropped in by hand) keeps
                // the content known.
                let twin = self
                    .files
                    .borrow()
                    .values()
                    .find(|f| f.sha256 == entry.sha256)
                    .map(|f| f.name.clone());
                match twin {
                    Some(t) => by_hash.insert(entry.sha256, t),
                    None => by_hash.remove(&entry.sha256),
                };
            }
        }
        if !self.by_hash.borrow().contains_key(&entry.sha256) {
            self.manifests.forget(&entry.sha256).await;
        }
        let path = self.files_dir.join(name);
        let removed = self.disk.run(move || fs::remove_file(path)).await;
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => log::warn!("deleting {name:?}: {e}"),
            _ => {}
        }
        self.save_index().await;
        Ok(entry)
    }

    // --- chunk manifests (SPEC8 §1) -----------------------------------------------------

    /// The manifest of stored file `name` cut into `chunk_size` chunks, computed off the
    /// loop on first request and kept on disk. Its `name` is this file's.
    pub async fn manifest(&self, name: &str, chunk_size: u32) -> Result<Manifest, StoreError> {
        let entry = self.file(name).ok_or(StoreError::FileNotFound)?;
        let path = self.files_dir.join(&entry.name);
        match self
            .manifests
            .of_file(path, (entry.sha256, chunk_size))
            .await
        {
            Ok(m) => {
                let mut m = (*m).clone();
                m.name = entry.name;
                Ok(m)
            }
            // Deleted or replaced meanwhile.
            Err(_) if self.file(name).is_none_or(|e| e.sha256 != entry.sha256) => {
                Err(StoreError::FileNotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a stored file has the manifest `id` and the box has computed it. Never
    /// computes anything (the tracker's `query_result.box`).
    pub fn has_manifest(&self, id: &Digest) -> bool {
        self.manifests
            .key_of(id)
            .is_some_and(|(sha, _)| self.by_hash.borrow().contains_key(&sha))
    }

    /// A computed manifest of a stored file by manifest hash, read from disk if it is not in
    /// memory. None if no stored file has it (or it was never computed).
    pub async fn manifest_by_id(&self, id: &Digest) -> Option<Arc<Manifest>> {
        if !self.has_manifest(id) {
            return None;
        }
        self.manifests.load(id).await
    }

    /// The same, from memory only (for a synchronous `chunks::Library`); call
    /// `manifest_by_id` first to bring it in.
    pub fn cached_manifest_by_id(&self, id: &Digest) -> Option<Arc<Manifest>> {
        if !self.has_manifest(id) {
            return None;
        }
        self.manifests.cached(id)
    }

    /// Brings the manifest a chunk-protocol message names into memory, so the synchronous
    /// `chunks::Library` lookups (`impl Library for Store`) find it. Await it before handing
    /// the message to a `chunks::Seeder`.
    pub async fn prepare_for(&self, msg: &crate::core::chunks::Message) {
        use crate::core::chunks::Message as M;
        if let M::Query { manifest }
        | M::GetManifest { manifest }
        | M::RequestChunk { manifest, .. } = msg
        {
            self.manifest_by_id(manifest).await;
        }
    }

    /// Reads chunk `index` of the stored file that has manifest `m` (pread, off the loop).
    /// The caller checks the bytes against the chunk's SHA-256 (`chunks::Seeder` does).
    pub async fn read_chunk(&self, m: &Manifest, index: u32) -> Result<Vec<u8>, StoreError> {
        let (sha, _) = self
            .manifests
            .key_of(&m.id())
            .ok_or(StoreError::FileNotFound)?;
        let name = self.by_hash.borrow().get(&sha).cloned();
        let path = self.files_dir.join(name.ok_or(StoreError::FileNotFound)?);
        let (offset, len) = (m.chunk_offset(index), m.chunk_len(index));
        smol::unblock(move || manifest::read_at(&path, offset, len))
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::FileNotFound,
                io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
                    StoreError::ChunkOutOfRange { index, chunks: 0 }
                }
                _ => e.into(),
            })
    }

    fn snapshot(&self) -> Vec<FileEntry> {
        self.files.borrow().values().cloned().collect()
    }

    /// Writes the index. A failure is logged, not returned: the files themselves are the
    /// truth, and the next start re-indexes any file the index misses.
    async fn save_index(&self) {
        let path = self.index_path.clone();
        let entries = self.snapshot();
        if let Err(e) = self.disk.run(move || write_index(&path, &entries)).await {
            log::warn!("could not save the file index: {e}");
        }
    }

    /// Stored files.
    pub fn file_count(&self) -> usize {
        self.files.borrow().len()
    }

    /// Bytes used by stored files.
    pub fn stored_bytes(&self) -> u64 {
        self.files.borrow().values().map(|f| f.size).sum()
    }
}

fn write_index(path: &Path, entries: &[FileEntry]) -> io::Result<()> {
    let json = serde_json::to_vec(entries).map_err(io::Error::other)?;
    write_atomically(path, &json)
}

/// Writes `bytes` to a temporary file, fsyncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` unless `to` exists. The raw system call, because nix offers
/// `renameat2` only on glibc, and the static builds (musl) and Termux (bionic) need it too.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::libc;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated and outlive the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn remove_upload_files(base: &Path) {
    for ext in ["part", "journal", "json"] {
        let _ = fs::remove_file(base.with_extension(ext));
    }
}

/// Feeds `file` from byte `from` to its end into `hasher`, 1 MiB at a time.
fn feed_from(file: &File, mut from: u64, hasher: &mut sha2::Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read_at(&mut buf, from)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        from += n as u64;
    }
}

/// SHA-256 of a whole file (used at start-up for files the index does not know).
fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut hasher = sha2::Sha256::new();
    feed_from(&File::open(path)?, 0, &mut hasher)?;
    Ok(Digest(hasher.finalize().into()))
}

/// A fresh upload id: 16 random hex digits.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // No urandom: a clock-and-counter id is still unique within this box.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes = (unix_ms() ^ (n << 48)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The box serves every computed manifest of a stored file, whole. Lookups are in memory
/// only: `Store::prepare_for` loads what a message needs first.
impl crate::core::chunks::Library for Store {
    fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
        self.cached_manifest_by_id(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two identical `POST /api/uploads` at once (the second arrives while the first waits
    /// for the disk) make one upload, not two that each get half the chunks.
    #[test]
    fn the_same_upload_asked_twice_at_once_is_one_upload() {
        let root = std::env::temp_dir().join(format!("lanvan-store-twice-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = Store::open(&root, StoreConfig::default(), Disk::start(4)).unwrap();
        let ask = || NewUpload {
            name: "a.bin".into(),
            size: 5 << 20,
            sha256: Some(Digest::of(b"not checked until finish")),
            device_id: Some("cli-1".into()),
            device_name: None,
        };
        let id = |c: Created| match c {
            Created::New(s) | Created::Resumed(s) => s.id,
            Created::AlreadyStored(_) => panic!("nothing is stored"),
        };
        smol::block_on(async {
            let (a, b) = futures_util::future::join(store.create(ask()), store.create(ask())).await;
            assert_eq!(id(a.unwrap()), id(b.unwrap()));
            assert_eq!(store.uploads.borrow().len(), 1);
        });
        let left = fs::read_dir(root.join(".lanvan/uploads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 3, "one upload's part, journal and header stay");
        let _ = fs::remove_dir_all(&root);
    }

    /// The Rust API the box's chunk server uses: manifest by name, by manifest hash, chunk
    /// reads, and all of it gone with the file.
    #[test]
    fn manifests_and_chunk_reads_follow_the_stored_files() {
        let root =
            std::env::temp_dir().join(format!("lanvan-store-manifest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("files")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
        fs::write(root.join("files/a.bin"), &data).unwrap();
        let store = Store::open(&root, StoreConfig::default(), Disk::start(4)).unwrap();
        smol::block_on(async {
            assert!(matches!(
                store.manifest("nope", 4096).await,
                Err(StoreError::FileNotFound)
            ));
            let m = store.manifest("a.bin", 4096).await.unwrap();
            assert_eq!((m.name.as_str(), m.chunk_count()), ("a.bin", 3));
            assert!(store.has_manifest(&m.id()));
            let by_id = store.manifest_by_id(&m.id()).await.unwrap();
            assert_eq!(by_id.chunks(), m.chunks());
            assert!(store.cached_manifest_by_id(&m.id()).is_some());
            for i in 0..3 {
                let chunk = store.read_chunk(&m, i).await.unwrap();
                assert_eq!(Digest::of(&chunk), m.chunks()[i as usize]);
            }
            assert!(store.read_chunk(&m, 3).await.is_err());
            // Serving through a Seeder, after `prepare_for`.
            use crate::core::chunks::{seeder::Output, Library, Message, Seeder};
            let ask = Message::RequestChunk {
                manifest: m.id(),
                index: 2,
                hash: m.chunks()[2],
            };
            store.prepare_for(&ask).await;
            assert!(Library::manifest(&store, &m.id()).is_some());
            let mut seeder = Seeder::new(16);
            seeder.handle_message(&ask, &store);
            let Some(Output::Read(read)) = seeder.poll_output() else {
                panic!("no read")
            };
            let bytes = store.read_chunk(&read.manifest, read.index).await.ok();
            seeder.chunk_read(&read, bytes);
            let Some(Output::Piece(piece)) = seeder.poll_output() else {
                panic!("no piece")
            };
            assert_eq!(&piece[48..], &data[8192..]);
            store.delete("a.bin").await.unwrap();
            assert!(!store.has_manifest(&m.id()));
            assert!(store.manifest_by_id(&m.id()).await.is_none());
            assert!(matches!(
                store.read_chunk(&m, 0).await,
                Err(StoreError::FileNotFound)
            ));
        });
        let _ = fs::remove_dir_all(&root);
    }
}
