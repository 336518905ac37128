//! An in-memory store for tests and dry runs.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::{Mutex, RwLock};

use super::{Digest, ObjectStore, Result, Source, StoreError, Writer};
use crate::progress::Progress;

#[derive(Default)]
pub struct MemoryStore {
    objects: RwLock<BTreeMap<Digest, Vec<u8>>>,
    index: Mutex<Vec<String>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Overwrite an object's bytes in place, as a corrupting disk would.
    pub fn corrupt(&self, d: &Digest, bytes: Vec<u8>) {
        if let Ok(mut m) = self.objects.write() {
            m.insert(*d, bytes);
        }
    }
}

fn poisoned() -> StoreError {
    StoreError::Remote("memory store lock poisoned".into())
}

impl ObjectStore for MemoryStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn contains(&self, d: &Digest) -> Result<bool> {
        Ok(self.objects.read().map_err(|_| poisoned())?.contains_key(d))
    }

    fn get(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.objects.read().map_err(|_| poisoned())?.get(d).cloned())
    }

    fn open(&self, d: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>> {
        Ok(self
            .get(d)?
            .map(|b| Box::new(Cursor::new(b)) as Box<dyn Read + Send>))
    }

    fn list(&self) -> Result<Vec<Digest>> {
        Ok(self
            .objects
            .read()
            .map_err(|_| poisoned())?
            .keys()
            .copied()
            .collect())
    }

    fn remove(&self, d: &Digest) -> Result<bool> {
        Ok(self
            .objects
            .write()
            .map_err(|_| poisoned())?
            .remove(d)
            .is_some())
    }

    fn begin(&self) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(MemoryWriter {
            store: self,
            pending: Mutex::new(Vec::new()),
        }))
    }

    fn index_append(&self, lines: &[String]) -> Result<()> {
        self.index
            .lock()
            .map_err(|_| poisoned())?
            .extend(lines.iter().cloned());
        Ok(())
    }

    fn index_read(&self) -> Result<Vec<String>> {
        Ok(self.index.lock().map_err(|_| poisoned())?.clone())
    }

    fn index_remove(&self, drop: &std::collections::HashSet<String>) -> Result<usize> {
        let mut index = self.index.lock().map_err(|_| poisoned())?;
        let before = index.len();
        index.retain(|l| !drop.contains(l));
        Ok(before - index.len())
    }
}

struct MemoryWriter<'a> {
    store: &'a MemoryStore,
    pending: Mutex<Vec<(Digest, Vec<u8>)>>,
}

impl Writer for MemoryWriter<'_> {
    fn put(
        &self,
        src: Source<'_>,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)> {
        let bytes = match src {
            Source::Bytes(b) => b.to_vec(),
            Source::Path(p) => std::fs::read(p).map_err(crate::fs_error::io("read", p))?,
            Source::Reader(r) => {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map_err(|source| {
                    StoreError::Io(crate::fs_error::FsError {
                        op: "read",
                        path: "<reader>".into(),
                        source,
                    })
                })?;
                v
            }
        };
        let d = Digest::of(&bytes);
        super::expect_source(expected, d)?;
        let n = bytes.len() as u64;
        progress.advance(n);
        self.pending
            .lock()
            .map_err(|_| poisoned())?
            .push((d, bytes));
        Ok((d, n))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().map_err(|_| poisoned())?);
        let mut m = self.store.objects.write().map_err(|_| poisoned())?;
        for (d, b) in pending {
            m.entry(d).or_insert(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn objects_appear_only_on_commit_and_mismatch_is_refused() {
        let s = MemoryStore::new();
        let w = s.begin().unwrap();
        let (d, n) = w.put(Source::Bytes(b"abc"), None, &NoProgress).unwrap();
        assert_eq!(n, 3);
        assert!(!s.contains(&d).unwrap());
        w.commit().unwrap();
        assert_eq!(s.get(&d).unwrap().unwrap(), b"abc");
        let w = s.begin().unwrap();
        let wrong = Digest::of(b"other");
        let e = w.put(Source::Bytes(b"abc"), Some(&wrong), &NoProgress);
        assert!(matches!(e, Err(StoreError::DigestMismatch { .. })));
        assert_eq!(s.get(&Digest::of(b"missing")).unwrap(), None);
    }
}
