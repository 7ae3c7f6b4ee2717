//! Garbage collection of images: which images this agent ran (the ledger), and how full the
//! disk holding Docker's data is.
//!
//! The Engine is shared with other programs (and, in tests, with other agents), so the agent
//! never removes an image it did not run itself: it only considers the images in its ledger,
//! `DATA_DIR/images.json`, which records every (reference, image id) pair it created a
//! container from. An image of the ledger is removed only when
//! - neither its reference nor its id is in the server's `keep_images` (every image of every
//!   retained release: a rollback to any of them must work with no registry reachable), and
//! - no container on the Engine (running or not, berth's or not) uses its id.
//!
//! What actually talks to the Engine is [`DockerDriver::collect_garbage`](crate::DockerDriver::collect_garbage);
//! when it runs (a `berth gc`, or the disk above a threshold) is decided by the agent shell in
//! [`node`](crate::node).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::record::write_atomic;

/// The ledger's file name under the agent's data directory.
pub const LEDGER_FILE: &str = "images.json";

/// One image the agent created a container from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageUse {
    /// The reference from the service (`registry/name:tag`), what a pull fetched.
    pub reference: String,
    /// The image id (`sha256:…`) the container was created from.
    pub id: String,
}

/// What `images.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LedgerFile {
    /// The last `gc_generation` this agent collected for, so a `berth gc` is run once, even
    /// across agent restarts.
    #[serde(default)]
    gc_generation: u64,
    #[serde(default)]
    images: BTreeSet<ImageUse>,
}

/// `DATA_DIR/images.json`: the images this agent ran, and the last `berth gc` it handled.
/// Written atomically on every change; changes are rare (a new image, a collection).
#[derive(Debug)]
pub struct ImageLedger {
    path: PathBuf,
    state: Mutex<LedgerFile>,
}

impl ImageLedger {
    /// Opens the ledger under `data_dir`. A missing file is an empty ledger; an unreadable one
    /// is logged and treated as empty (the images it listed are then never collected, which is
    /// the safe way to be wrong).
    pub fn open(data_dir: &Path) -> ImageLedger {
        let path = data_dir.join(LEDGER_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the image ledger; starting an empty one");
                LedgerFile::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerFile::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the image ledger; starting an empty one");
                LedgerFile::default()
            }
        };
        ImageLedger {
            path,
            state: Mutex::new(state),
        }
    }

    /// Records that a container was created from image `id` for `reference`.
    pub fn note(&self, reference: &str, id: &str) {
        let entry = ImageUse {
            reference: reference.to_string(),
            id: id.to_string(),
        };
        self.update(|f| f.images.insert(entry));
    }

    /// Forgets an image (it was removed, or is no longer the agent's to remove).
    pub fn forget(&self, entry: &ImageUse) {
        self.update(|f| f.images.remove(entry));
    }

    /// Every image recorded.
    pub fn images(&self) -> Vec<ImageUse> {
        self.lock().images.iter().cloned().collect()
    }

    /// The last `gc_generation` collected for.
    pub fn gc_generation(&self) -> u64 {
        self.lock().gc_generation
    }

    /// Remembers that generation `n` was collected for.
    pub fn set_gc_generation(&self, n: u64) {
        self.update(|f| {
            let changed = f.gc_generation != n;
            f.gc_generation = n;
            changed
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerFile> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` and saves the file when it says something changed. A failed save is
    /// logged: the ledger in memory stays right for this agent's life.
    fn update(&self, change: impl FnOnce(&mut LedgerFile) -> bool) {
        let mut state = self.lock();
        if change(&mut state) {
            if let Err(e) = self.save(&state) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save the image ledger");
            }
        }
    }

    fn save(&self, state: &LedgerFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        write_atomic(&self.path, &bytes)
    }
}

/// The fraction (0.0–1.0) of the filesystem holding `path` that is used, as `df` computes it
/// (blocks used over blocks used plus blocks available to unprivileged users). `None` when the
/// path cannot be examined (e.g. an agent in a container that does not see Docker's data root).
pub fn disk_used_fraction(path: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as f64;
    let free = st.blocks_free() as f64;
    let avail = st.blocks_available() as f64;
    let used = total - free;
    let denominator = used + avail;
    (denominator > 0.0).then(|| used / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_survives_a_restart_and_forgets_on_request() {
        let dir = std::env::temp_dir().join(format!("berth-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ledger = ImageLedger::open(&dir);
        ledger.note("app:v1", "sha256:a");
        ledger.note("app:v1", "sha256:a");
        ledger.note("app:v2", "sha256:b");
        ledger.set_gc_generation(3);
        let again = ImageLedger::open(&dir);
        assert_eq!(again.images().len(), 2);
        assert_eq!(again.gc_generation(), 3);
        again.forget(&ImageUse {
            reference: "app:v1".into(),
            id: "sha256:a".into(),
        });
        assert_eq!(
            ImageLedger::open(&dir).images(),
            vec![ImageUse {
                reference: "app:v2".into(),
                id: "sha256:b".into()
            }]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_root_filesystem_has_a_usage() {
        let used = disk_used_fraction(Path::new("/")).expect("statvfs /");
        assert!((0.0..=1.0).contains(&used), "{used}");
    }
}
