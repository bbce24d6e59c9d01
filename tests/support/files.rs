//! Temporary files that tasks and tests share: a single path ([`TempPath`]) or a
//! directory of named markers ([`Scratch`]). Both are removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{wait_until, BOUND};

/// A file path in the temp dir, unique to this process and call; removed on drop.
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("procpool-core-{}-{tag}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
        TempPath(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a task argument.
    pub fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    pub fn exists(&self) -> bool {
        self.0.exists()
    }

    /// Creates the file (opens the gate of a task waiting for it).
    pub fn touch(&self) {
        std::fs::write(&self.0, b"").expect("create temp file");
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch directory for marker files, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "procpool-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    /// The path of `name` in the directory, as a string a task can take.
    pub fn path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    pub fn dir(&self) -> String {
        self.dir.to_str().expect("utf-8 path").to_string()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    pub fn touch(&self, name: &str) {
        std::fs::write(self.dir.join(name), b"").expect("touch marker");
    }

    /// Waits (bounded) until the marker `name` exists.
    pub async fn wait_for(&self, name: &str) {
        let path = self.dir.join(name);
        let shown = path.display().to_string();
        assert!(
            wait_until(BOUND, move || path.exists()).await,
            "marker {shown} never appeared"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
