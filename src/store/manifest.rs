//! Manifests of stored files (SPEC8 §1): computed once per file content and chunk size on a
//! blocking thread (`smol::unblock`), kept on disk under `.lanvan/manifests/` as
//! `<file sha256>-<chunk size>-<manifest hash>.json`, and a few kept in memory.
//! Never hashes or reads on the event loop; the store decides which files still exist.

use crate::core::chunks::{Chunker, Manifest, ManifestJson};
use crate::core::hash::Digest;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A computed manifest's key: the file's SHA-256 and the chunk size.
pub type Key = (Digest, u32);

/// The manifests the box has computed.
pub struct Manifests {
    dir: PathBuf,
    max_cached: usize,
    /// Every manifest on disk, both ways (64 bytes an entry; bounded by the stored files,
    /// since a file's manifests are removed with its content).
    ids: RefCell<HashMap<Digest, Key>>,
    keys: RefCell<HashMap<Key, Digest>>,
    /// Most recently used manifests in memory, newest last; at most `max_cached`.
    cache: RefCell<VecDeque<Arc<Manifest>>>,
    /// One computation at a time: a second request for the same file waits and then finds
    /// it done, and hashing never takes more than one blocking thread.
    computing: smol::lock::Mutex<()>,
}

impl Manifests {
    /// Opens (creating) the directory and indexes the manifests in it. Blocking: call at start.
    pub fn open(dir: &Path, max_cached: usize) -> io::Result<Manifests> {
        fs::create_dir_all(dir)?;
        let m = Manifests {
            dir: dir.to_path_buf(),
            max_cached: max_cached.max(1),
            ids: RefCell::default(),
            keys: RefCell::default(),
            cache: RefCell::default(),
            computing: smol::lock::Mutex::new(()),
        };
        for dirent in fs::read_dir(dir)? {
            let name = dirent?.file_name();
            let Some(name) = name.to_str() else { continue };
            match parse_file_name(name) {
                Some((key, id)) => m.insert(key, id),
                // Leftovers of a write cut short.
                None if name.ends_with(".tmp") => {
                    let _ = fs::remove_file(dir.join(name));
                }
                None => {}
            }
        }
        Ok(m)
    }

    fn insert(&self, key: Key, id: Digest) {
        self.ids.borrow_mut().insert(id, key);
        self.keys.borrow_mut().insert(key, id);
    }

    /// The file content and chunk size a computed manifest belongs to.
    pub fn key_of(&self, id: &Digest) -> Option<Key> {
        self.ids.borrow().get(id).copied()
    }

    /// Number of manifests on disk.
    pub fn len(&self) -> usize {
        self.ids.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A manifest in memory, by manifest hash (moves it to the newest place).
    pub fn cached(&self, id: &Digest) -> Option<Arc<Manifest>> {
        let mut cache = self.cache.borrow_mut();
        let pos = cache.iter().position(|m| m.id() == *id)?;
        let m = cache.remove(pos)?;
        cache.push_back(m.clone());
        Some(m)
    }

    fn remember(&self, m: Arc<Manifest>) {
        let mut cache = self.cache.borrow_mut();
        cache.retain(|c| c.id() != m.id());
        cache.push_back(m);
        while cache.len() > self.max_cached {
            cache.pop_front();
        }
    }

    /// The manifest of the stored file at `path` whose content is `key.0`, loading it from
    /// disk or computing it (once) when needed. A file whose bytes no longer hash to
    /// `key.0` is an error, never a manifest.
    pub async fn of_file(&self, path: PathBuf, key: Key) -> io::Result<Arc<Manifest>> {
        if let Some(id) = self.keys.borrow().get(&key).copied() {
            if let Some(m) = self.cached(&id) {
                return Ok(m);
            }
        }
        let _turn = self.computing.lock().await;
        let known = self.keys.borrow().get(&key).copied();
        if let Some(id) = known {
            if let Some(m) = self.load(&id).await {
                return Ok(m);
            }
        }
        let file = self.dir.join(file_name(key, &Digest([0; 32])));
        let dir = self.dir.clone();
        let m = smol::unblock(move || -> io::Result<Manifest> {
            let m = compute(&path, key.1)?;
            if m.sha256 != Some(key.0) {
                return Err(io::Error::other(
                    "the file changed while its manifest was computed",
                ));
            }
            let text = serde_json::to_vec(&m.to_json()).map_err(io::Error::other)?;
            let tmp = file.with_extension("tmp");
            fs::write(&tmp, &text)?;
            fs::rename(&tmp, dir.join(file_name(key, &m.id())))?;
            Ok(m)
        })
        .await?;
        let m = Arc::new(m);
        self.insert(key, m.id());
        self.remember(m.clone());
        Ok(m)
    }

    /// A computed manifest by manifest hash, from memory or disk; None if the box never
    /// computed it (or its cache file is damaged).
    pub async fn load(&self, id: &Digest) -> Option<Arc<Manifest>> {
        if let Some(m) = self.cached(id) {
            return Some(m);
        }
        let key = self.key_of(id)?;
        let path = self.dir.join(file_name(key, id));
        let want = *id;
        let m = smol::unblock(move || -> Option<Manifest> {
            let json: ManifestJson = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
            let m = Manifest::from_json(json).ok()?;
            (m.id() == want && m.sha256 == Some(key.0) && m.chunk_size() == key.1).then_some(m)
        })
        .await;
        let Some(m) = m else {
            log::warn!("the manifest cache file of {id} is unreadable; it will be recomputed");
            self.ids.borrow_mut().remove(id);
            self.keys.borrow_mut().remove(&key);
            return None;
        };
        let m = Arc::new(m);
        self.remember(m.clone());
        Some(m)
    }

    /// Forgets every manifest of file content `sha256` (its last stored copy is gone) and
    /// removes their cache files.
    pub async fn forget(&self, sha256: &Digest) {
        let gone: Vec<(Key, Digest)> = self
            .keys
            .borrow()
            .iter()
            .filter(|(k, _)| k.0 == *sha256)
            .map(|(k, id)| (*k, *id))
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut paths = Vec::new();
        for (key, id) in gone {
            self.keys.borrow_mut().remove(&key);
            self.ids.borrow_mut().remove(&id);
            self.cache.borrow_mut().retain(|m| m.id() != id);
            paths.push(self.dir.join(file_name(key, &id)));
        }
        smol::unblock(move || {
            for p in paths {
                let _ = fs::remove_file(p);
            }
        })
        .await;
    }

    /// Removes the manifests of file contents no longer stored. Blocking: call at start.
    pub fn prune(&self, stored: impl Fn(&Digest) -> bool) {
        let gone: Vec<(Key, Digest)> = self
            .keys
            .borrow()
            .iter()
            .filter(|(k, _)| !stored(&k.0))
            .map(|(k, id)| (*k, *id))
            .collect();
        for (key, id) in gone {
            self.keys.borrow_mut().remove(&key);
            self.ids.borrow_mut().remove(&id);
            let _ = fs::remove_file(self.dir.join(file_name(key, &id)));
        }
    }
}

fn file_name(key: Key, id: &Digest) -> String {
    format!("{}-{}-{}.json", key.0, key.1, id)
}

fn parse_file_name(name: &str) -> Option<(Key, Digest)> {
    let stem = name.strip_suffix(".json")?;
    let mut parts = stem.split('-');
    let sha = Digest::from_hex(parts.next()?)?;
    let chunk_size: u32 = parts.next()?.parse().ok()?;
    let id = Digest::from_hex(parts.next()?)?;
    parts.next().is_none().then_some(((sha, chunk_size), id))
}

/// Reads a whole file and computes its manifest. Blocking.
pub fn compute(path: &Path, chunk_size: u32) -> io::Result<Manifest> {
    let mut file = fs::File::open(path)?;
    let mut chunker = Chunker::new(chunk_size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        chunker.push(&buf[..n]);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    chunker
        .finish(name)
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Reads `len` bytes at `offset` of the file at `path` (pread; a chunk). Blocking.
pub fn read_at(path: &Path, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such chunk"));
    }
    let mut buf = vec![0u8; len as usize];
    fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lanvan-manifests-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn computed_once_then_loaded_from_disk_and_forgotten() {
        let root = tmpdir("once");
        let file = root.join("a.bin");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&file, &data).unwrap();
        let key = (Digest::of(&data), 1024);
        smol::block_on(async {
            let ms = Manifests::open(&root.join("m"), 2).unwrap();
            let m = ms.of_file(file.clone(), key).await.unwrap();
            assert_eq!(m.chunk_count(), 5);
            assert_eq!(
                read_at(&file, m.chunk_offset(4), m.chunk_len(4)).unwrap(),
                &data[4096..]
            );
            assert_eq!(ms.key_of(&m.id()), Some(key));
            // A fresh index finds it on disk and never reads the file again.
            let ms2 = Manifests::open(&root.join("m"), 2).unwrap();
            fs::remove_file(&file).unwrap();
            assert_eq!(ms2.load(&m.id()).await.as_deref(), Some(&*m));
            assert_eq!(ms2.of_file(file.clone(), key).await.unwrap(), m);
            ms2.forget(&key.0).await;
            assert!(ms2.is_empty());
            assert_eq!(fs::read_dir(root.join("m")).unwrap().count(), 0);
        });
    }

    #[test]
    fn a_changed_file_gives_no_manifest_and_memory_is_bounded() {
        let root = tmpdir("changed");
        let file = root.join("a.bin");
        fs::write(&file, b"new bytes").unwrap();
        smol::block_on(async {
            let ms = Manifests::open(&root.join("m"), 2).unwrap();
            assert!(ms
                .of_file(file.clone(), (Digest::of(b"old"), 4))
                .await
                .is_err());
            assert!(ms.is_empty());
            for cs in 1..=4 {
                ms.of_file(file.clone(), (Digest::of(b"new bytes"), cs))
                    .await
                    .unwrap();
            }
            assert_eq!(ms.len(), 4);
            assert_eq!(ms.cache.borrow().len(), 2);
            ms.prune(|_| false);
            assert!(ms.is_empty());
        });
    }
}
