//! Fetching log files named by notifications, through the `object_store` crate.
//!
//! In: an [`ObjectRef`] (bucket and key). Out: the object's bytes, or a [`FetchError`] that says
//! whether the failure is poison (the object is missing, access is denied, the key is invalid:
//! dead-letter it and move on) or transient (retried with backoff by `object_store`; still
//! failing: do not commit, try again later).
//!
//! Stores: S3 (or any S3-compatible store via `endpoint`), with the standard credential sources
//! `object_store` reads (environment, web identity, container and instance credentials), one
//! client per bucket; or a local folder laid out like a bucket, for the folder service, read as
//! replay reads files (refused by size before reading, never past the limit). Concurrency is
//! bounded by a semaphore, so a burst of notifications cannot open unbounded requests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use tokio::sync::Semaphore;

use crate::config::{FetchSettings, S3Credentials, StoreSettings};
use crate::decode::FileError;
use crate::notification::ObjectRef;
use crate::timerange::TimeRange;

impl StoreSettings {
    /// A client builder for `bucket`: the standard AWS environment, then these settings.
    pub fn s3_builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let StoreSettings::S3 {
            region,
            endpoint,
            allow_http,
            credentials,
        } = self
        {
            if let Some(region) = region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(credentials) = credentials {
                builder = credentials.apply(builder);
            }
            builder = builder.with_allow_http(*allow_http);
        }
        builder
    }
}

impl S3Credentials {
    fn apply(&self, builder: AmazonS3Builder) -> AmazonS3Builder {
        let builder = builder
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(self.secret_access_key.expose());
        match &self.session_token {
            Some(token) => builder.with_token(token.expose()),
            None => builder,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("object {} not found", object_url(.bucket, .key))]
    NotFound { bucket: String, key: String },
    #[error("access to {} denied: {message}", object_url(.bucket, .key))]
    Denied {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("object {} is {size} bytes, over the {limit}-byte limit", object_url(.bucket, .key))]
    TooLarge {
        bucket: String,
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid object key {key:?}: {message}")]
    InvalidKey { key: String, message: String },
    #[error("fetching {} failed: {message}", object_url(.bucket, .key))]
    Transient {
        bucket: String,
        key: String,
        message: String,
    },
    /// A file of a local folder that exists but cannot be read (permissions, I/O): perhaps only
    /// for now, so it is retried, a bounded number of times.
    #[error("cannot read {key}: {message}")]
    Unreadable { key: String, message: String },
    #[error("store for bucket {bucket}: {message}")]
    Store { bucket: String, message: String },
}

/// `s3://bucket/key`, or the key alone for a local folder (no bucket).
pub fn object_url(bucket: &str, key: &str) -> String {
    if bucket.is_empty() {
        key.to_owned()
    } else {
        format!("s3://{bucket}/{key}")
    }
}

impl FetchError {
    /// Poison: retrying will not help; dead-letter and commit.
    pub fn is_poison(&self) -> bool {
        !matches!(
            self,
            FetchError::Transient { .. } | FetchError::Unreadable { .. } | FetchError::Store { .. }
        )
    }

    /// A bounded label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::NotFound { .. } => "missing_object",
            FetchError::Denied { .. } => "access_denied",
            FetchError::TooLarge { .. } => "object_too_large",
            FetchError::InvalidKey { .. } => "invalid_key",
            FetchError::Transient { .. } => "fetch_failed",
            FetchError::Unreadable { .. } => "unreadable",
            FetchError::Store { .. } => "store_unavailable",
        }
    }
}

/// Fetches objects with bounded concurrency.
pub struct Fetcher {
    settings: FetchSettings,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    permits: Semaphore,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Fetcher {
        let permits = Semaphore::new(settings.concurrency.max(1));
        Fetcher {
            settings,
            stores: Mutex::new(HashMap::new()),
            permits,
        }
    }

    fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, FetchError> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = stores.get(bucket) {
            return Ok(Arc::clone(store));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                max_backoff: self.settings.max_backoff,
                ..BackoffConfig::default()
            },
            max_retries: self.settings.retries,
            retry_timeout: self.settings.max_backoff * (self.settings.retries as u32 + 1) * 2,
        };
        if let StoreSettings::Local(_) = &self.settings.store {
            return Err(FetchError::Store {
                bucket: bucket.into(),
                message: "a local folder has no buckets".into(),
            });
        }
        let builder = self.settings.store.s3_builder(bucket).with_retry(retry);
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| FetchError::Store {
            bucket: bucket.into(),
            message: e.to_string(),
        })?);
        stores.insert(bucket.to_owned(), Arc::clone(&store));
        Ok(store)
    }

    /// Fetches one object's bytes.
    pub async fn fetch(&self, object: &ObjectRef) -> Result<bytes::Bytes, FetchError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (bucket, key) = (object.bucket.clone(), object.key.clone());
        if let StoreSettings::Local(root) = &self.settings.store {
            let (root, limit) = (root.clone(), self.settings.max_object_bytes);
            return tokio::task::spawn_blocking(move || read_local(&root, &key, limit))
                .await
                .unwrap_or_else(|e| {
                    Err(FetchError::Unreadable {
                        key: object.key.clone(),
                        message: e.to_string(),
                    })
                });
        }
        let path = ObjectPath::parse(&object.key).map_err(|e| FetchError::InvalidKey {
            key: key.clone(),
            message: e.to_string(),
        })?;
        let store = self.store(&object.bucket)?;
        let classify = |e| classify(&bucket, &key, e);
        let result = store.get(&path).await.map_err(classify)?;
        let size = result.meta.size as usize;
        if size > self.settings.max_object_bytes {
            return Err(FetchError::TooLarge {
                bucket,
                key,
                size,
                limit: self.settings.max_object_bytes,
            });
        }
        result.bytes().await.map_err(classify)
    }
}

/// An object store error as a [`FetchError`] for `key` of `bucket`.
fn classify(bucket: &str, key: &str, error: object_store::Error) -> FetchError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    match error {
        object_store::Error::NotFound { .. } => FetchError::NotFound { bucket, key },
        object_store::Error::PermissionDenied { source, .. }
        | object_store::Error::Unauthenticated { source, .. } => FetchError::Denied {
            bucket,
            key,
            message: source.to_string(),
        },
        other => FetchError::Transient {
            bucket,
            key,
            message: other.to_string(),
        },
    }
}

/// A log file found under a prefix by [`Fetcher::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    pub object: ObjectRef,
    /// When CloudTrail delivered it: the time in its name, else its last-modified time.
    pub delivered: i64,
}

/// What [`Fetcher::list`] found under a prefix.
#[derive(Debug, Default)]
pub struct Listing {
    /// Log files (`.json`, `.jsonl`, `.gz`) delivered within the range.
    pub files: Vec<Listed>,
    /// Log files delivered outside the range (date folders left out unread are not counted).
    pub outside_range: usize,
    /// Objects that are not log files by their name.
    pub not_log_files: usize,
}

impl Fetcher {
    /// The log files under `prefix` of `bucket` delivered within `range`. CloudTrail files its
    /// logs under `.../<year>/<month>/<day>/`: folders of that layout outside the range are not
    /// listed, so a day of a years-long trail is found in a few requests. Folders are listed
    /// level by level, `fetch.concurrency` at a time.
    pub async fn list(&self, bucket: &str, prefix: &str, range: TimeRange) -> Result<Listing, FetchError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let store = self.store(bucket)?;
        let prefix = prefix.trim_matches('/');
        let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let mut listing = Listing::default();
        let mut level = vec![root];
        while !level.is_empty() {
            let found: Vec<object_store::ListResult> = futures::stream::iter(level.drain(..))
                .map(|folder| {
                    let store = Arc::clone(&store);
                    async move {
                        let key = folder.as_ref().map_or_else(String::new, ToString::to_string);
                        store
                            .list_with_delimiter(folder.as_ref())
                            .await
                            .map_err(|e| classify(bucket, &key, e))
                    }
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .try_collect()
                .await?;
            for result in found {
                for folder in result.common_prefixes {
                    if range.may_hold(&date_parts(&folder)) {
                        level.push(Some(folder));
                    }
                }
                for meta in result.objects {
                    let Some(name) = meta.location.filename() else {
                        continue;
                    };
                    if ![".json", ".jsonl", ".gz"].iter().any(|ext| name.ends_with(ext)) {
                        listing.not_log_files += 1;
                        continue;
                    }
                    let delivered =
                        crate::decode::delivery_time(name).unwrap_or_else(|| meta.last_modified.timestamp());
                    if !range.contains(delivered) {
                        listing.outside_range += 1;
                        continue;
                    }
                    listing.files.push(Listed {
                        object: ObjectRef {
                            bucket: bucket.to_owned(),
                            key: meta.location.to_string(),
                        },
                        delivered,
                    });
                }
            }
        }
        Ok(listing)
    }
}

/// The date a folder of CloudTrail's layout stands for: its trailing run of numeric parts, if it
/// reads as `<year>`, `<year>/<month>` or `<year>/<month>/<day>`; else nothing.
fn date_parts(folder: &ObjectPath) -> Vec<u32> {
    let parts: Vec<String> = folder.parts().map(|p| p.as_ref().to_owned()).collect();
    let numeric = parts
        .iter()
        .rev()
        .take_while(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .count()
        .min(3);
    let tail = &parts[parts.len() - numeric..];
    let widths: Vec<usize> = tail.iter().map(|p| p.len()).collect();
    match widths.as_slice() {
        [4] | [4, 2] | [4, 2, 2] => tail.iter().filter_map(|p| p.parse().ok()).collect(),
        _ => Vec::new(),
    }
}

/// Reads `key` under the folder `root`, as replay reads a file: refused by its size before it is
/// read, never read past `limit`. Keys are file paths relative to the folder: any name a file can
/// have, but no `..` and no absolute path, so that nothing outside the folder is read.
fn read_local(root: &Path, key: &str, limit: usize) -> Result<bytes::Bytes, FetchError> {
    let relative = Path::new(key);
    if key.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(FetchError::InvalidKey {
            key: key.to_owned(),
            message: "not a path inside the folder".into(),
        });
    }
    let mut bytes = Vec::new();
    match crate::replay::read_bounded(&root.join(relative), limit, &mut bytes) {
        Ok(()) => Ok(bytes.into()),
        Err(FileError::TooLarge { limit }) => Err(FetchError::TooLarge {
            bucket: String::new(),
            key: key.to_owned(),
            size: std::fs::metadata(root.join(relative)).map_or(limit + 1, |m| m.len() as usize),
            limit,
        }),
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NotFound {
            bucket: String::new(),
            key: key.to_owned(),
        }),
        Err(e) => Err(FetchError::Unreadable {
            key: key.to_owned(),
            message: match e {
                FileError::Io(io) => io.to_string(),
                other => other.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn date_folders_of_cloudtrails_layout_are_recognised() {
        let parts = |p: &str| date_parts(&ObjectPath::from(p));
        assert_eq!(parts("AWSLogs/111122223333/CloudTrail/us-east-1/2024"), [2024]);
        assert_eq!(
            parts("AWSLogs/111122223333/CloudTrail/us-east-1/2024/05"),
            [2024, 5]
        );
        assert_eq!(
            parts("AWSLogs/111122223333/CloudTrail/us-east-1/2024/05/01"),
            [2024, 5, 1]
        );
        assert!(
            parts("AWSLogs/111122223333").is_empty(),
            "an account is not a year"
        );
        assert!(parts("AWSLogs/o-abc/111122223333/CloudTrail").is_empty());
        assert!(parts("logs/2024/5").is_empty(), "months are two digits");
    }

    fn local(root: PathBuf) -> Fetcher {
        Fetcher::new(FetchSettings {
            store: StoreSettings::Local(root),
            concurrency: 2,
            retries: 0,
            max_backoff: Duration::from_millis(10),
            max_object_bytes: 1000,
        })
    }

    #[tokio::test]
    async fn local_objects_are_read_by_key_and_missing_ones_are_poison() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("AWSLogs/1")).unwrap();
        std::fs::write(dir.path().join("AWSLogs/1/f.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("big.json"), vec![b' '; 2000]).unwrap();
        let f = local(dir.path().to_owned());
        let got = f
            .fetch(&ObjectRef {
                bucket: "any".into(),
                key: "AWSLogs/1/f.json".into(),
            })
            .await
            .unwrap();
        assert_eq!(&got[..], b"{}");
        let missing = f
            .fetch(&ObjectRef {
                bucket: "any".into(),
                key: "AWSLogs/1/none.json".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.reason(), "missing_object");
        assert!(missing.is_poison());
        let big = f
            .fetch(&ObjectRef {
                bucket: "any".into(),
                key: "big.json".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(big.reason(), "object_too_large");
    }

    #[tokio::test]
    async fn a_local_file_that_cannot_be_read_is_unreadable_not_poison() {
        let dir = tempfile::tempdir().unwrap();
        // Reading /proc/self/mem from offset 0 fails for every user, root included.
        std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("mem.json")).unwrap();
        let f = local(dir.path().to_owned());
        let err = f
            .fetch(&ObjectRef {
                bucket: String::new(),
                key: "mem.json".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unreadable");
        assert!(!err.is_poison());
        assert!(err.to_string().starts_with("cannot read mem.json: "), "{err}");
    }

    #[tokio::test]
    async fn keys_that_escape_the_root_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let f = local(dir.path().to_owned());
        let err = f
            .fetch(&ObjectRef {
                bucket: "b".into(),
                key: "../etc/passwd".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
    }
}
