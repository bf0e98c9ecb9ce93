//! One batch of notifications, up to decoded files: the stateless half every source shares.
//!
//! In: notifications (from a topic, or files found in a watched folder). Out: the decoded files,
//! each with the notification it came from, and the dead letters for what could not be used.
//! Transient fetch failures are not dead letters: their notifications are returned to retry,
//! whole, later. Decoding runs on every core, off the async threads.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;

use crate::decode::{DecodeLimits, DecodedFile, Decoder};
use crate::fetch::{object_url, FetchError, Fetcher};
use crate::metrics::{Latencies, Metrics};
use crate::notification::{decode_notification, ObjectRef};
use crate::replay::Escaped;
use crate::rules::RuleSet;
use crate::run::RunReport;
use crate::sink::{DeadLetter, DeadLetterSource};

/// One notification of a batch.
pub struct Notification {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// For the folder source: the file itself, no notification to decode.
    pub direct: Option<ObjectRef>,
}

impl Notification {
    fn source(&self) -> DeadLetterSource {
        DeadLetterSource {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The retry key: notifications are retried one by one.
    pub fn position(&self) -> (String, i32, i64) {
        (self.topic.clone(), self.partition, self.offset)
    }
}

/// A dead letter with the key of the notification it came from.
pub type KeyedDeadLetter = (Option<Vec<u8>>, DeadLetter);

/// A batch's files, decoded, and what could not be used.
pub struct Decoded {
    /// Each file with the index of its notification in the batch.
    pub files: Vec<(DecodedFile, usize)>,
    pub dead: Vec<KeyedDeadLetter>,
    /// Notifications to retry (transient failures), by topic, partition and offset.
    pub retry: BTreeSet<(String, i32, i64)>,
    /// Why each notification to retry failed (by its index in the batch, with the object that
    /// failed), for the dead letter of one tried too often.
    pub retry_errors: Vec<(usize, ObjectRef, FetchError)>,
}

/// Decoders for every core, kept from batch to batch (each holds caches worth keeping).
pub struct DecoderPool {
    decoders: Vec<Decoder>,
}

impl DecoderPool {
    /// `max_event_time_skew`: see [`Decoder::with_event_time_skew`].
    pub fn new(
        workers: usize,
        limits: DecodeLimits,
        rules: Option<Arc<RuleSet>>,
        max_event_time_skew: i64,
    ) -> DecoderPool {
        DecoderPool {
            decoders: (0..workers.max(1))
                .map(|_| Decoder::with_rules(limits, rules.clone()).with_event_time_skew(max_event_time_skew))
                .collect(),
        }
    }

    /// Decodes `files` on every core; blocking.
    pub fn decode(&mut self, files: &[(Arc<str>, Bytes)]) -> Vec<DecodedFile> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<DecodedFile>>> =
            files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let workers = self.decoders.len().min(files.len()).max(1);
        std::thread::scope(|s| {
            for decoder in self.decoders.iter_mut().take(workers) {
                let (next, slots) = (&next, &slots);
                s.spawn(move || {
                    while let Some(i) = Some(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        .filter(|i| *i < files.len())
                    {
                        let decoded = decoder.decode(&files[i].0, &files[i].1);
                        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(decoded);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Notifications → objects → bytes → decoded files, counting as it goes.
pub async fn decode_batch(
    pool: &mut Option<DecoderPool>,
    fetcher: &Fetcher,
    batch: &[Notification],
    report: &mut RunReport,
    metrics: &Metrics,
    latencies: &Latencies,
) -> Decoded {
    let mut dead = Vec::new();
    let mut retry = BTreeSet::new();
    let mut retry_errors = Vec::new();

    // Notifications → objects.
    let mut wanted: Vec<(usize, ObjectRef)> = Vec::new();
    for (i, n) in batch.iter().enumerate() {
        report.notifications += 1;
        if let Some(obj) = &n.direct {
            wanted.push((i, obj.clone()));
            continue;
        }
        let notice = decode_notification(&n.payload);
        let outcome = if !notice.problems.is_empty() {
            "dead_letter"
        } else if notice.objects.is_empty() {
            "ignored"
        } else {
            "processed"
        };
        metrics.notifications.with_label_values(&[outcome]).inc();
        for problem in notice.problems {
            dead.push((
                n.key.clone(),
                DeadLetter {
                    reason: problem.reason.to_owned(),
                    detail: problem.detail,
                    source: n.source(),
                    object: None,
                    payload: n.payload_text(),
                },
            ));
        }
        wanted.extend(notice.objects.into_iter().map(|o| (i, o)));
    }

    // Objects → bytes, concurrently (the fetcher bounds how many at once).
    let fetched = join_all(wanted.iter().map(|(_, o)| fetcher.fetch(o))).await;
    let mut files: Vec<(Arc<str>, Bytes)> = Vec::new();
    let mut owners: Vec<usize> = Vec::new();
    for ((i, object), result) in wanted.iter().zip(fetched) {
        let n = &batch[*i];
        let url = object_url(&object.bucket, &object.key);
        match result {
            Ok(bytes) => {
                files.push((Arc::from(url.as_str()), bytes));
                owners.push(*i);
            }
            Err(e) if e.is_poison() => dead.push((
                n.key.clone(),
                fetch_dead_letter(&e, n.source(), url, n.payload_text()),
            )),
            Err(e) => {
                tracing::warn!(error = %Escaped(&e.to_string()), "transient fetch failure; the notification will be retried");
                metrics.notifications.with_label_values(&["retried"]).inc();
                retry.insert(n.position());
                retry_errors.push((*i, object.clone(), e));
            }
        }
    }
    // A notification to retry is not processed now, even in part: it will be, whole, later.
    let (files, owners): (Vec<_>, Vec<_>) = files
        .into_iter()
        .zip(owners)
        .filter(|(_, i)| !retry.contains(&batch[*i].position()))
        .unzip();

    // Bytes → events, off the async threads.
    let mut taken = pool
        .take()
        .expect("the decoder pool is returned after each batch");
    let (taken, files, decoded) = tokio::task::spawn_blocking(move || {
        let decoded = taken.decode(&files);
        (taken, files, decoded)
    })
    .await
    .expect("decoding does not panic");
    *pool = Some(taken);

    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::with_capacity(decoded.len());
    for ((file, (name, _)), owner) in decoded.into_iter().zip(files).zip(owners) {
        report.files += 1;
        let records = (file.events.len() + file.skipped.len()) as u64;
        report.records += records;
        let skipped = file.skipped.len() as u64;
        metrics.records.with_label_values(&["skipped"]).inc_by(skipped);
        metrics
            .records
            .with_label_values(&["event"])
            .inc_by(records - skipped);
        let outcome = match (&file.error, file.skip) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "skipped",
            (None, None) => "decoded",
        };
        metrics.files.with_label_values(&[outcome]).inc();
        metrics.file_seconds.observe(file.took.as_secs_f64());
        latencies.record_file(file.took);
        if let Some(newest) = file.events.iter().map(|e| e.time).max() {
            metrics.event_lag_seconds.observe((now - newest).max(0) as f64);
            latencies.record_lag(now - newest);
        }
        let n = &batch[owner];
        if let Some(error) = &file.error {
            dead.push((
                n.key.clone(),
                DeadLetter {
                    reason: error.reason().to_owned(),
                    detail: error.to_string(),
                    source: n.source(),
                    object: Some(name.to_string()),
                    payload: n.payload_text(),
                },
            ));
        }
        out.push((file, owner));
    }
    Decoded {
        files: out,
        dead,
        retry,
        retry_errors,
    }
}

/// The dead letter of notification `n`, given up on after `attempts` tries of `object`, which
/// kept failing with `error`.
pub fn given_up(n: &Notification, object: &ObjectRef, error: &FetchError, attempts: u32) -> KeyedDeadLetter {
    let mut dead = fetch_dead_letter(
        error,
        n.source(),
        object_url(&object.bucket, &object.key),
        n.payload_text(),
    );
    dead.detail = format!("{} (gave up after {attempts} attempts)", dead.detail);
    (n.key.clone(), dead)
}

fn fetch_dead_letter(e: &FetchError, source: DeadLetterSource, url: String, payload: String) -> DeadLetter {
    DeadLetter {
        reason: e.reason().to_owned(),
        detail: e.to_string(),
        source,
        object: Some(url),
        payload,
    }
}
