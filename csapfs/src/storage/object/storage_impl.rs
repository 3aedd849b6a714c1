//! [`Storage`] over object keys (the mapping and its limits: the parent module's doc).

use super::*;

impl ObjectStorage {
    fn new_source(&self, path: ObjectPath, size: u64, etag: Option<String>) -> Source {
        Source {
            id: self.inner.next_source.fetch_add(1, Ordering::Relaxed),
            path,
            etag,
            size,
        }
    }

    /// Opens what is stored at `rel` now (a fresh HEAD: its size and ETag pin the reads).
    fn open_remote(&self, rel: &str) -> io::Result<Arc<OpenState>> {
        let inner = &self.inner;
        let key = inner.key(rel);
        let found = match inner.block_on("opening", key.as_ref(), inner.store.head(&key)) {
            Ok(found) => found,
            Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                return Err(match inner.meta(rel)? {
                    Meta::Dir => io::Error::from(Errno::ISDIR),
                    _ => err,
                });
            }
            Err(err) => return Err(err),
        };
        inner.meta.remember_stat(
            rel,
            Meta::File {
                size: found.size,
                mtime: found.last_modified.into(),
            },
        );
        Ok(Arc::new(OpenState {
            rel: Mutex::new(rel.to_string()),
            pending: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            body: RwLock::new(Body::Remote {
                source: self.new_source(key, found.size, found.e_tag),
                layout: Arc::new(OnceLock::new()),
            }),
            mtime: Mutex::new(found.last_modified.into()),
        }))
    }

    fn refuse_existing(&self, rel: &str) -> io::Result<()> {
        match self.inner.meta(rel)? {
            Meta::Missing => Ok(()),
            _ => Err(io::Error::from(Errno::EXIST)),
        }
    }

    /// Copies one object, then deletes the source (the store has no rename).
    fn move_object(&self, from: &ObjectPath, to: &ObjectPath) -> io::Result<()> {
        let inner = &self.inner;
        inner.block_on("copying", from.as_ref(), inner.store.copy(from, to))?;
        match inner.block_on("removing", from.as_ref(), inner.store.delete(from)) {
            Err(err) if err.raw_os_error() != Some(Errno::NOENT.raw_os_error()) => Err(err),
            _ => Ok(()),
        }
    }

    /// Open objects now stored at `to` read the copy: its ETag pins their reads from now on.
    fn repin_moved(&self, from: &str, to: &str) {
        let inner = &self.inner;
        for (rel, state) in inner.open_objects.below(from) {
            let new_rel = format!("{to}{}", &rel[from.len()..]);
            let mut body = state.body.write().unwrap_or_else(|p| p.into_inner());
            if let Body::Remote { source, .. } = &mut *body {
                let path = inner.key(&new_rel);
                let etag = inner
                    .block_on("opening", path.as_ref(), inner.store.head(&path))
                    .ok()
                    .and_then(|meta| meta.e_tag);
                source.path = path;
                source.etag = etag;
            }
        }
        inner.open_objects.renamed(from, to);
    }
}

impl Storage for ObjectStorage {
    fn describe(&self) -> String {
        self.inner.config.url.clone()
    }

    fn stat(&self, path: &Path) -> io::Result<Attr> {
        let rel = rel_string(path)?;
        let meta = self.inner.meta(&rel)?;
        self.inner.attr_of(&rel, meta)
    }

    fn set_attr(&self, path: &Path, change: &AttrChange) -> io::Result<()> {
        self.stat(path)?;
        if change.is_empty() {
            return Ok(());
        }
        // Objects carry no owner, mode or settable times (module doc).
        Err(io::Error::from(Errno::PERM))
    }

    fn statfs(&self) -> io::Result<FsStats> {
        // An object store has no capacity to report: a large fixed figure, as other S3 mounts.
        Ok(FsStats {
            blocks: 1 << 40,
            blocks_free: 1 << 40,
            blocks_available: 1 << 40,
            files: 1 << 40,
            files_free: 1 << 40,
            block_size: 4096,
            name_max: 255,
            fragment_size: 4096,
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>> {
        let rel = rel_string(dir)?;
        match self.inner.meta(&rel)? {
            Meta::Dir => {}
            Meta::File { .. } => return Err(io::Error::from(Errno::NOTDIR)),
            Meta::Missing => return Err(io::Error::from(Errno::NOENT)),
        }
        let listed = self.inner.list_raw(&rel)?;
        let child = |name: &str| {
            if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            }
        };
        let mut items: Vec<DirItem> = listed
            .iter()
            .map(|l| DirItem {
                ino: self.inner.inodes.of(&child(&l.name)),
                name: OsString::from(&l.name),
                kind: if l.meta == Meta::Dir {
                    Kind::Dir
                } else {
                    Kind::File
                },
            })
            .collect();
        // Created here and not uploaded yet: listed all the same.
        for (path, state) in self.inner.open_objects.below(&rel) {
            let direct = parent_of(&path) == rel && path != rel;
            if direct
                && state.pending.load(Ordering::Acquire)
                && !state.unlinked.load(Ordering::Acquire)
            {
                let name = path.rsplit('/').next().unwrap_or(&path);
                if !items.iter().any(|i| i.name == name) {
                    items.push(DirItem {
                        ino: self.inner.inodes.of(&path),
                        name: OsString::from(name),
                        kind: Kind::File,
                    });
                }
            }
        }
        Ok(items)
    }

    fn make_dir(&self, path: &Path, _perm: u32, _owner: Option<Owner>) -> io::Result<()> {
        let rel = rel_string(path)?;
        if rel.is_empty() {
            return Err(io::Error::from(Errno::EXIST));
        }
        self.refuse_existing(&rel)?;
        self.inner.check_parent(&rel)?;
        self.inner.keep_dir(&rel)?;
        self.inner.meta.remember(&rel, Meta::Dir);
        Ok(())
    }

    fn make_special(
        &self,
        path: &Path,
        _node: Special,
        _perm: u32,
        _owner: Option<Owner>,
    ) -> io::Result<()> {
        rel_string(path)?;
        Err(io::Error::from(Errno::PERM))
    }

    fn make_symlink(&self, path: &Path, _target: &Path, _owner: Option<Owner>) -> io::Result<()> {
        rel_string(path)?;
        Err(io::Error::from(Errno::PERM))
    }

    fn hard_link(&self, _existing: &Path, new: &Path) -> io::Result<()> {
        rel_string(new)?;
        Err(io::Error::from(Errno::PERM))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.stat(path)?;
        Err(io::Error::from(Errno::INVAL))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let rel = rel_string(path)?;
        let inner = &self.inner;
        let meta = inner.meta(&rel)?;
        match meta {
            Meta::Dir => return Err(io::Error::from(Errno::ISDIR)),
            Meta::Missing => return Err(io::Error::from(Errno::NOENT)),
            Meta::File { .. } => {}
        }
        let open = inner.open_objects.at(&rel);
        let only_here = open.iter().any(|s| s.pending.load(Ordering::Acquire));
        for state in &open {
            state.unlinked.store(true, Ordering::Release);
        }
        inner.keep_dir(parent_of(&rel))?;
        if !only_here {
            let key = inner.key(&rel);
            inner.block_on("removing", key.as_ref(), inner.store.delete(&key))?;
        }
        inner.inodes.removed(&rel);
        inner.meta.remember(&rel, Meta::Missing);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let rel = rel_string(path)?;
        if rel.is_empty() {
            return Err(io::Error::from(Errno::BUSY));
        }
        let inner = &self.inner;
        match inner.meta(&rel)? {
            Meta::Dir => {}
            Meta::File { .. } => return Err(io::Error::from(Errno::NOTDIR)),
            Meta::Missing => return Err(io::Error::from(Errno::NOENT)),
        }
        let marker = inner.marker(&rel);
        let below = inner.keys_below(&rel)?;
        let pending_below =
            inner.open_objects.below(&rel).iter().any(|(_, s)| {
                s.pending.load(Ordering::Acquire) && !s.unlinked.load(Ordering::Acquire)
            });
        if pending_below || below.iter().any(|key| *key != marker) {
            return Err(io::Error::from(Errno::NOTEMPTY));
        }
        inner.keep_dir(parent_of(&rel))?;
        match inner.block_on("removing", marker.as_ref(), inner.store.delete(&marker)) {
            Err(err) if err.raw_os_error() != Some(Errno::NOENT.raw_os_error()) => return Err(err),
            _ => {}
        }
        inner.inodes.removed(&rel);
        inner.meta.changed_below(&rel);
        inner.meta.remember_stat(&rel, Meta::Missing);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path, replace: Replace) -> io::Result<()> {
        let (from, to) = (rel_string(from)?, rel_string(to)?);
        if from.is_empty() || to.is_empty() {
            return Err(io::Error::from(Errno::BUSY));
        }
        if from == to {
            return Ok(());
        }
        if is_at_or_below(&to, &from) {
            return Err(io::Error::from(Errno::INVAL));
        }
        let inner = &self.inner;
        let moved = inner.meta(&from)?;
        let target = inner.meta(&to)?;
        inner.check_parent(&to)?;
        if target != Meta::Missing && replace == Replace::Never {
            return Err(io::Error::from(Errno::EXIST));
        }
        match (moved, target) {
            (Meta::Missing, _) => return Err(io::Error::from(Errno::NOENT)),
            (Meta::File { .. }, Meta::Dir) => return Err(io::Error::from(Errno::ISDIR)),
            (Meta::Dir, Meta::File { .. }) => return Err(io::Error::from(Errno::NOTDIR)),
            (Meta::Dir, Meta::Dir) => {
                let marker = inner.marker(&to);
                if inner.keys_below(&to)?.iter().any(|key| *key != marker) {
                    return Err(io::Error::from(Errno::NOTEMPTY));
                }
            }
            _ => {}
        }
        inner.keep_dir(parent_of(&from))?;
        match moved {
            Meta::File { .. } => {
                let pending = inner
                    .open_objects
                    .at(&from)
                    .iter()
                    .any(|s| s.pending.load(Ordering::Acquire));
                if !pending {
                    self.move_object(&inner.key(&from), &inner.key(&to))?;
                }
            }
            _ => {
                // Copy + delete of every object below, one by one (not atomic: module doc).
                let (old, new) = (inner.key(&from), inner.key(&to));
                for key in inner.keys_below(&from)? {
                    let Some(rest) = key.prefix_match(&old) else {
                        continue;
                    };
                    let mut parts: Vec<PathPart<'static>> = new
                        .parts()
                        .map(|p| PathPart::from(p.as_ref().to_string()))
                        .collect();
                    parts.extend(rest.map(|p| PathPart::from(p.as_ref().to_string())));
                    self.move_object(&key, &ObjectPath::from_iter(parts))?;
                }
            }
        }
        for state in inner.open_objects.at(&to) {
            state.unlinked.store(true, Ordering::Release);
        }
        self.repin_moved(&from, &to);
        inner.inodes.renamed(&from, &to);
        inner.meta.changed_below(&from);
        inner.meta.changed_below(&to);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // Every change above returned once the store had it: nothing is held back.
        self.stat(dir).map(|_| ())
    }

    fn open(&self, path: &Path, _mode: OpenMode) -> io::Result<Box<dyn StoredObject>> {
        let rel = rel_string(path)?;
        // Open here already (maybe not uploaded yet): every open shares what it holds.
        let state = match self.inner.open_state(&rel) {
            Some(state) => state,
            None => self.open_remote(&rel)?,
        };
        Ok(Box::new(ObjectFile::new(self.inner.clone(), state)))
    }

    fn create(
        &self,
        path: &Path,
        _perm: u32,
        _owner: Option<Owner>,
    ) -> io::Result<Box<dyn StoredObject>> {
        let rel = rel_string(path)?;
        if rel.is_empty() {
            return Err(io::Error::from(Errno::EXIST));
        }
        self.refuse_existing(&rel)?;
        self.inner.check_parent(&rel)?;
        let file = self.inner.staging_file(&rel)?;
        let state = Arc::new(OpenState {
            rel: Mutex::new(rel.clone()),
            pending: AtomicBool::new(true),
            unlinked: AtomicBool::new(false),
            body: RwLock::new(Body::Staged {
                file,
                dirty: AtomicBool::new(true),
            }),
            mtime: Mutex::new(SystemTime::now()),
        });
        self.inner.meta.changed(&rel);
        Ok(Box::new(ObjectFile::new(self.inner.clone(), state)))
    }

    fn put_new(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let rel = rel_string(path)?;
        if rel.is_empty() {
            return Err(io::Error::from(Errno::EXIST));
        }
        self.refuse_existing(&rel)?;
        // Staged whole first (ciphertext): nothing is under the key until the upload completes.
        let file = self.inner.staging_file(&rel)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|err| local_error("staging", &rel, err.into_error()))?;
        let size = self.inner.upload(&rel, &file, true)?;
        self.inner.meta.remember(
            &rel,
            Meta::File {
                size,
                mtime: SystemTime::now(),
            },
        );
        Ok(())
    }
}
