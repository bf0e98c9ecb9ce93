//! The checkpoint store for state partitions: one snapshot object per partition and offset.
//!
//! In: a partition's [`PartitionSnapshot`] and the offset of the next event it has not judged.
//! Out: the newest snapshot of a partition, to take it up on assignment or restart.
//!
//! Snapshots are written, never overwritten: each is a new object named
//! `partitions/<partition>/<next offset>-<writer>.json.gz`, and the one with the highest offset is
//! the partition's state. That is the fence. A process that lost a partition (a stalled member
//! the group has moved on from) may still write a snapshot, but it cannot replace a newer one:
//! a lower offset loses to the newer owner's, and a higher one holds a state that is itself a
//! correct account of the partition's events up to that offset (a partition's state is a
//! function of its events), from which a later owner can go on. Nothing needs a conditional write,
//! so a folder and any S3-compatible store serve alike. Older snapshots are deleted, keeping the
//! last few.

use std::sync::Arc;

use anyhow::Context as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use crate::config::StoreSettings;
use crate::engine::PartitionSnapshot;

/// Snapshots kept per partition (older ones are deleted after a write).
const KEPT: usize = 3;

/// A snapshot as found in the store.
pub struct Found {
    /// The offset of the next event the snapshot has not judged.
    pub next_offset: i64,
    pub snapshot: PartitionSnapshot,
    pub bytes: usize,
}

/// The object store and prefix a checkpoint URL names: `s3://bucket/prefix` (through the `[s3]`
/// settings, so that an S3-compatible store works as for fetching), `file:///path` or a path.
pub fn open_store(url: &str, s3: &StoreSettings) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = s3
            .s3_builder(bucket)
            .build()
            .with_context(|| format!("checkpoint.url {url}"))?;
        return Ok((Arc::new(store), prefix.trim_matches('/').to_owned()));
    }
    let dir = std::path::PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    std::fs::create_dir_all(&dir).with_context(|| format!("checkpoint folder {}", dir.display()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
    Ok((Arc::new(store), String::new()))
}

/// Where partition snapshots live: a folder, or an object-store prefix.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl SnapshotStore {
    /// `url`: `s3://bucket/prefix` (through the `[s3]` settings, so an S3-compatible store works
    /// as for fetching), `file:///path` or a plain path.
    pub fn open(url: &str, s3: &StoreSettings) -> anyhow::Result<SnapshotStore> {
        let (store, prefix) = open_store(url, s3)?;
        Ok(SnapshotStore { store, prefix })
    }

    fn folder(&self, partition: u32) -> ObjectPath {
        let folder = format!("partitions/{partition:05}");
        if self.prefix.is_empty() {
            ObjectPath::from(folder)
        } else {
            ObjectPath::from(format!("{}/{folder}", self.prefix))
        }
    }

    /// The partition's snapshots, by next offset, oldest first.
    async fn list(&self, partition: u32) -> anyhow::Result<Vec<(i64, ObjectPath)>> {
        use futures::TryStreamExt as _;
        let folder = self.folder(partition);
        let metas: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .with_context(|| format!("listing the snapshots of partition {partition}"))?;
        let mut found: Vec<(i64, ObjectPath)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let offset = name.split('-').next()?.parse::<i64>().ok()?;
                name.ends_with(".json.gz").then_some((offset, m.location))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// The offset of the newest snapshot, without reading it.
    pub async fn newest_offset(&self, partition: u32) -> anyhow::Result<Option<i64>> {
        Ok(self.list(partition).await?.last().map(|(o, _)| *o))
    }

    /// The newest readable snapshot of `partition`, if any. A snapshot that cannot be read (cut
    /// short, or from a version that wrote another shape) is reported and passed over for the one
    /// before it: a partition's state at an older offset is as correct, only further behind.
    /// Returns it with the number of newer snapshots passed over.
    pub async fn load(&self, partition: u32) -> anyhow::Result<(Option<Found>, usize)> {
        let mut found = self.list(partition).await?;
        let mut passed_over = 0;
        while let Some((next_offset, path)) = found.pop() {
            match self.read(&path).await {
                Ok((snapshot, bytes)) => {
                    let found = Found {
                        next_offset,
                        snapshot,
                        bytes,
                    };
                    return Ok((Some(found), passed_over));
                }
                Err(e) => {
                    tracing::warn!(partition, snapshot = %path, error = format!("{e:#}"),
                        "partition snapshot unreadable: passing over it for an older one");
                    passed_over += 1;
                }
            }
        }
        if passed_over > 0 {
            tracing::warn!(
                partition,
                passed_over,
                "no readable snapshot of the partition: starting it anew"
            );
        }
        Ok((None, passed_over))
    }

    async fn read(&self, path: &ObjectPath) -> anyhow::Result<(PartitionSnapshot, usize)> {
        let bytes = self.store.get(path).await?.bytes().await?;
        let size = bytes.len();
        let snapshot = tokio::task::spawn_blocking(move || -> anyhow::Result<PartitionSnapshot> {
            Ok(serde_json::from_reader(flate2::read::GzDecoder::new(&bytes[..]))?)
        })
        .await??;
        Ok((snapshot, size))
    }

    /// Writes a snapshot of `partition` taken before event `next_offset`, as `writer`; returns its
    /// size in bytes.
    pub async fn save(
        &self,
        partition: u32,
        next_offset: i64,
        writer: &str,
        snapshot: PartitionSnapshot,
    ) -> anyhow::Result<usize> {
        let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            serde_json::to_writer(&mut gz, &snapshot)?;
            Ok(gz.finish()?)
        })
        .await??;
        let size = bytes.len();
        let writer: String = writer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(64)
            .collect();
        let path = self
            .folder(partition)
            .child(format!("{next_offset:020}-{writer}.json.gz"));
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {path}"))?;
        let all = self.list(partition).await?;
        for (_, old) in all.iter().take(all.len().saturating_sub(KEPT)) {
            // Another writer may have deleted it already.
            let _ = self.store.delete(old).await;
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Detector;
    use crate::engine::StatePartition;

    fn snapshot() -> PartitionSnapshot {
        let detector = Detector::new(crate::config::Settings::default().detector, 1);
        StatePartition::sourced(detector, 0).snapshot(None)
    }

    #[tokio::test]
    async fn an_unreadable_newest_snapshot_is_passed_over_for_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(
            dir.path().to_str().unwrap(),
            &StoreSettings::Local(Default::default()),
        )
        .unwrap();
        store.save(4, 100, "a", snapshot()).await.unwrap();
        store.save(4, 200, "b", snapshot()).await.unwrap();
        let newest = dir.path().join("partitions/00004/00000000000000000200-b.json.gz");
        let whole = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &whole[..whole.len() / 2]).unwrap();

        let (found, passed_over) = store.load(4).await.unwrap();
        assert_eq!(found.map(|f| f.next_offset), Some(100));
        assert_eq!(passed_over, 1);

        std::fs::write(
            dir.path().join("partitions/00004/00000000000000000100-a.json.gz"),
            b"{}",
        )
        .unwrap();
        let (found, passed_over) = store.load(4).await.unwrap();
        assert!(found.is_none());
        assert_eq!(passed_over, 2);
        assert_eq!(store.newest_offset(5).await.unwrap(), None);
    }
}
