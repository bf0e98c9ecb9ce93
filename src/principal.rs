//! Principal keys: one stable key per identity, derived from `userIdentity`.
//!
//! In: a record's [`UserIdentity`] (possibly absent) and its `recipientAccountId`.
//! Out: a [`Principal`] whose `key` is what baselines are kept under and what the stateful half is
//! partitioned by. The key is stable across sessions, access keys and time, so that every event of
//! one identity reaches the same baseline. Derivation never fails: a record with no usable identity
//! still gets a key (`anonymous:` or `untyped:`), so no event is dropped for want of one.
//!
//! | `userIdentity.type`   | key                                                        |
//! |-----------------------|------------------------------------------------------------|
//! | `Root`                | `arn:aws:iam::<account>:root`                              |
//! | `IAMUser`             | the user ARN, else `iamuser:<account>:<userName or principalId>` |
//! | `AssumedRole`         | the role ARN (`sessionContext.sessionIssuer.arn`), else the role ARN rebuilt from the `assumed-role` ARN, else `role:<account>:<principalId before ':'>`; the session name is kept as detail |
//! | `Role`                | the ARN                                                    |
//! | `FederatedUser`       | the `federated-user` ARN, else the session issuer's ARN    |
//! | `AWSAccount`          | `awsaccount:<account>:<principalId before ':'>`            |
//! | `AWSService`          | `service:<invokedBy>`                                      |
//! | `SAMLUser`            | `saml:<identityProvider>:<userName>`                       |
//! | `WebIdentityUser`     | `webidentity:<identityProvider>:<userName>`                |
//! | `IdentityCenterUser`  | `identitycenter:<identityStoreArn>:<userId>`               |
//! | `Directory`           | `directory:<account>:<userName or principalId>`            |
//! | `Unknown`             | `unknown:<account>:<userName or principalId>`              |
//! | other type            | `<type lowercased>:<account>:<arn or userName or principalId>` |
//! | no `type`             | `service:<invokedBy>` when present, else `untyped:<account>:<principalId>` |
//! | no `userIdentity`     | `anonymous:<recipientAccountId>`                           |
//!
//! `<account>` is `accountId`, else `recipientAccountId`, else `-`.

use std::sync::Arc;

use crate::generations::Generations;
use compact_str::{format_compact, CompactString};

use crate::engine::murmur2;
use crate::record::{SessionIssuer, UserIdentity};

/// One identity, as baselines and anomalies name it.
// Aligned to a cache line so that, inside an `Arc`, the fields sit on a line of their own, away
// from the reference counts: a decoding thread clones the `Arc` for each event while another
// thread's shard reads the fields of that principal's earlier events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(align(64))]
pub struct Principal {
    /// The stable key (see the module table).
    pub key: CompactString,
    /// `userIdentity.type` as recorded, `none` when the record has no type, `anonymous` when it has
    /// no `userIdentity` at all.
    pub kind: CompactString,
    pub account_id: Option<CompactString>,
    /// The identity's ARN as recorded (for an assumed role: the session ARN).
    pub arn: Option<CompactString>,
    /// Assumed-role session name, or the user name where the key does not carry it.
    pub session: Option<CompactString>,
}

/// Principals already derived, by a digest of the text of their `userIdentity` and the record's
/// recipient account: within a stream the same identities recur record after record, and a hit
/// skips parsing the identity, deriving its key and allocating its strings. The table holds the
/// digest, not the text: a lookup reads one entry rather than comparing the text with a copy that
/// has long left the cache. The digest is xxh3-128 under a seed drawn for the process (so a file
/// cannot be written to make two identities collide), derived from the recipient account; two
/// texts sharing a digest by chance is a 2^-128 event.
///
/// A text not seen before is looked up again without the contents of its credentials, the
/// string values of [`CREDENTIAL_KEYS`]: each session of a role, an instance profile or a console
/// user has its own access key and creation time, so without this every session's first record
/// was derived afresh, and in a trail of a few records per session nearly all of them were. No
/// principal reads those values, so texts that differ only in them share a principal, and its
/// key. The exact text is looked up first, so a record of a session already seen costs one
/// digest, as before.
///
/// Bounded: two generations (see `crate::generations`) of at most `PRINCIPALS_REMEMBERED`
/// identities, whose principals hold at most `PRINCIPAL_BYTES_REMEMBERED` bytes in each, by
/// exact text and as many again by text without credentials. Weighing each entry by its
/// identity's text (about twice what its principal holds) rotated a generation every 7,000
/// identities: fewer than a month of a 5,000-principal organisation's roles and users, which
/// were then derived again and again. So a stream of a few more identities than one generation
/// holds (thousands of role sessions an hour) keeps hitting.
pub struct PrincipalCache {
    /// What the cache gives out for each remembered identity (its key always set), by the
    /// digest of its exact text, weighed by what its principal holds.
    remembered: Generations<u128, Known>,
    /// The same, by the digest of the text without its credentials.
    sessions: Generations<u128, Known>,
    seed: u64,
    /// Finds each of [`CREDENTIAL_KEYS`], quoted.
    credential_keys: [memchr::memmem::Finder<'static>; CREDENTIAL_KEYS.len()],
    /// The text being digested, its credentials left out.
    without_credentials: Vec<u8>,
}

impl Default for PrincipalCache {
    fn default() -> Self {
        PrincipalCache {
            remembered: Generations::new(PRINCIPALS_REMEMBERED, PRINCIPAL_BYTES_REMEMBERED),
            sessions: Generations::new(PRINCIPALS_REMEMBERED, PRINCIPAL_BYTES_REMEMBERED),
            seed: random_seed(),
            credential_keys: credential_finders(),
            without_credentials: Vec::new(),
        }
    }
}

/// Keys of `userIdentity` (`accessKeyId`) and of its session's attributes (`creationDate`)
/// whose values change from one session of an identity to the next, and which neither a
/// principal nor a rule gate remembered by identity reads (see `crate::rules::gate`).
pub const CREDENTIAL_KEYS: [&str; 2] = ["accessKeyId", "creationDate"];

/// A finder of each of [`CREDENTIAL_KEYS`], quoted as a key is.
fn credential_finders() -> [memchr::memmem::Finder<'static>; CREDENTIAL_KEYS.len()] {
    CREDENTIAL_KEYS.map(|key| memchr::memmem::Finder::new(format!("\"{key}\"").as_bytes()).into_owned())
}

/// A seed for digests of texts a file controls, drawn at random (as std draws the keys of its
/// hash maps) so that no file can be written to make two texts share a digest.
pub(crate) fn random_seed() -> u64 {
    std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8)
}

/// A number standing for one `userIdentity` text, up to its credentials (see [`PrincipalCache`]),
/// in records of one recipient account: two records given the same key have the same text but
/// for the string values of [`CREDENTIAL_KEYS`], and the same recipient. Unique within the
/// process (never reused, also after a cache is cleared), so that memories keyed by it (the
/// rules' gate verdicts) need not store and compare the text again.
pub type IdentityKey = u64;

fn next_identity_key() -> IdentityKey {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A principal as the cache gives it out, with what the stages after the decoder find it by.
#[derive(Clone)]
pub struct Known {
    pub principal: Arc<Principal>,
    /// The key of the identity text, when the cache remembers it.
    pub identity_key: Option<IdentityKey>,
    pub hashes: PrincipalHashes,
}

impl Known {
    /// `principal`, its key hashed.
    pub fn new(principal: Principal, identity_key: Option<IdentityKey>) -> Known {
        Known {
            hashes: PrincipalHashes::of(&principal.key),
            principal: Arc::new(principal),
            identity_key,
        }
    }
}

/// Hashes of a principal key, which the stages after the decoder route an event and find its
/// principal's state by: taken once per remembered identity in the principal cache and carried in
/// each event, so that neither stage reads the key (long out of the cache by then, and on
/// another core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrincipalHashes {
    /// [`murmur2`] of the key: the Kafka partition hash, which routes the event.
    pub partition: u32,
    /// [`key_digest`] of the key, which a shard finds the baseline by.
    pub digest: u128,
}

impl PrincipalHashes {
    pub fn of(key: &str) -> PrincipalHashes {
        PrincipalHashes {
            partition: murmur2(key.as_bytes()),
            digest: key_digest(key),
        }
    }
}

/// The digest a shard finds a principal's baseline by: xxh3-128 of the principal key under a seed
/// drawn once for the process (the same in every thread), so that no file can be written to make
/// two principals share a baseline. Taken by the decoder from the principal cache, where the key
/// is at hand, rather than in the shard, where it has long left the cache.
pub fn key_digest(key: &str) -> u128 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), *SEED.get_or_init(random_seed))
}

pub(crate) const PRINCIPALS_REMEMBERED: usize = 16_384;

const PRINCIPAL_BYTES_REMEMBERED: usize = 4 << 20;

/// Identities with a longer text are derived each time rather than remembered, so that the cache
/// stays bounded in bytes whatever a file holds.
const LONGEST_IDENTITY_REMEMBERED: usize = 4096;

impl PrincipalCache {
    /// The principal of a record whose `userIdentity` is `identity` (its JSON text), derived by
    /// `derive` unless known, with the text's key when it is remembered.
    pub fn get(
        &mut self,
        identity: &str,
        recipient_account: Option<&str>,
        derive: impl FnOnce() -> Principal,
    ) -> Known {
        if identity.len() > LONGEST_IDENTITY_REMEMBERED {
            return Known::new(derive(), None);
        }
        use xxhash_rust::xxh3::xxh3_128_with_seed;
        let seed = self.seed_for(recipient_account);
        let PrincipalCache {
            remembered,
            sessions,
            credential_keys,
            without_credentials: scratch,
            ..
        } = self;
        let digest = xxh3_128_with_seed(identity.as_bytes(), seed);
        let weighed = |known: Known| {
            let weight = known.principal.bytes_held();
            (known, weight)
        };
        let session = || {
            let text = without_credentials(identity.as_bytes(), credential_keys, scratch);
            let make = || weighed(Known::new(derive(), Some(next_identity_key())));
            weighed(sessions.with(xxh3_128_with_seed(text, seed), make, Known::clone))
        };
        remembered.with(digest, session, Known::clone)
    }

    /// The seed of the digests of identities in records of `recipient_account`.
    fn seed_for(&self, recipient_account: Option<&str>) -> u64 {
        // No account id is 0xff (not UTF-8): an absent recipient differs from every present one.
        let recipient = recipient_account.map_or(&[0xff][..], str::as_bytes);
        xxhash_rust::xxh3::xxh3_64_with_seed(recipient, self.seed)
    }

    /// The digest `identity` is remembered by, exactly.
    #[cfg(test)]
    fn digest(&self, identity: &str, recipient_account: Option<&str>) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(identity.as_bytes(), self.seed_for(recipient_account))
    }
}

/// `identity` with the contents of its credentials' string values removed, into `out` when
/// there are any; the keys and the quotes stay, so the text still says where a value was. The
/// first of each of `keys` is cut, each after the one before: CloudTrail writes `accessKeyId`
/// before `sessionContext`, and so does a re-serialiser sorting keys. Searching the whole text
/// for every one took twice as long. A credential elsewhere stays in the text, which then misses
/// the cache and is derived: never a wrong principal. Only a key where JSON has one counts:
/// after `{` or `,`, followed by `:` and a string. Inside a string a quote is escaped, so a
/// key's text there is never taken for a key.
fn without_credentials<'t>(
    identity: &'t [u8],
    keys: &[memchr::memmem::Finder<'_>; CREDENTIAL_KEYS.len()],
    out: &'t mut Vec<u8>,
) -> &'t [u8] {
    let mut cuts = [(0, 0); CREDENTIAL_KEYS.len()];
    let mut found = 0;
    let mut from = 0;
    for finder in keys {
        let mut at = from;
        while let Some(offset) = finder.find(&identity[at..]) {
            let key = at + offset;
            if let Some(cut) = string_value_after(identity, key, finder.needle().len()) {
                cuts[found] = cut;
                found += 1;
                from = cut.1;
                break;
            }
            at = key + 1;
        }
    }
    if found == 0 {
        return identity;
    }
    out.clear();
    let mut kept = 0;
    for &(start, end) in &cuts[..found] {
        out.extend_from_slice(&identity[kept..start]);
        kept = end;
    }
    out.extend_from_slice(&identity[kept..]);
    out
}

/// The range of the contents of the string value of the key quoted at `at` (`len` bytes with
/// its quotes), if it is a key with a string value.
fn string_value_after(text: &[u8], at: usize, len: usize) -> Option<(usize, usize)> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let before = text[..at].iter().rev().find(|b| !is_space(b))?;
    if !matches!(before, b'{' | b',') {
        return None;
    }
    let mut i = at + len;
    let skip_space = |i: &mut usize| {
        while text.get(*i).is_some_and(is_space) {
            *i += 1;
        }
    };
    skip_space(&mut i);
    if text.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    skip_space(&mut i);
    if text.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut end = start;
    loop {
        end += memchr::memchr2(b'"', b'\\', text.get(end..)?)?;
        match text[end] {
            b'"' => return Some((start, end)),
            // An escape: the byte after the backslash is not the string's end.
            _ => end += 2,
        }
    }
}

/// Derives the principal of a record. See the module table for the keys.
pub fn derive(identity: Option<&UserIdentity<'_>>, recipient_account: Option<&str>) -> Principal {
    let Some(id) = identity else {
        return Principal {
            key: concat(&["anonymous:", recipient_account.unwrap_or("-")]),
            kind: "anonymous".into(),
            account_id: recipient_account.map(Into::into),
            arn: None,
            session: None,
        };
    };
    let account = id.account_id.get().or(recipient_account);
    let acct = account.unwrap_or("-");
    let arn = id.arn.get();
    let user_name = id.user_name.get();
    let principal_id = id.principal_id.get();
    let issuer = issuer(id);
    let name_or_id = user_name.or(principal_id).unwrap_or("-");
    let mut session = None;

    let (kind, key): (&str, CompactString) = match id.kind.get() {
        Some("Root") => ("Root", concat(&["arn:aws:iam::", acct, ":root"])),
        Some("IAMUser") => (
            "IAMUser",
            match arn {
                Some(arn) => arn.into(),
                None => concat(&["iamuser:", acct, ":", name_or_id]),
            },
        ),
        Some("AssumedRole") => {
            session = arn
                .and_then(|a| a.rsplit_once('/').map(|(_, s)| s))
                .or_else(|| principal_id.and_then(|p| p.split_once(':').map(|(_, s)| s)))
                .map(Into::into);
            let key = match issuer.and_then(|i| i.arn.get()) {
                Some(role) => role.into(),
                None => arn.and_then(role_arn_from_session_arn).unwrap_or_else(|| {
                    let role_id = principal_id
                        .map(|p| p.split(':').next().unwrap_or(p))
                        .unwrap_or("-");
                    concat(&["role:", acct, ":", role_id])
                }),
            };
            ("AssumedRole", key)
        }
        Some("FederatedUser") => {
            session = user_name.map(Into::into);
            let key = match (arn, issuer.and_then(|i| i.arn.get())) {
                (Some(arn), _) => arn.into(),
                (None, Some(issuer)) => issuer.into(),
                (None, None) => concat(&["federated:", acct, ":", name_or_id]),
            };
            ("FederatedUser", key)
        }
        Some("AWSAccount") => {
            let caller = principal_id
                .map(|p| p.split(':').next().unwrap_or(p))
                .unwrap_or("-");
            ("AWSAccount", concat(&["awsaccount:", acct, ":", caller]))
        }
        Some("AWSService") => (
            "AWSService",
            concat(&["service:", id.invoked_by.get().or(principal_id).unwrap_or("-")]),
        ),
        Some("SAMLUser") => (
            "SAMLUser",
            concat(&[
                "saml:",
                id.identity_provider.get().unwrap_or("-"),
                ":",
                name_or_id,
            ]),
        ),
        Some("WebIdentityUser") => (
            "WebIdentityUser",
            concat(&[
                "webidentity:",
                id.identity_provider.get().unwrap_or("-"),
                ":",
                name_or_id,
            ]),
        ),
        Some("IdentityCenterUser") => {
            let behalf = id.on_behalf_of.as_ref().map(|b| &b.0);
            let store = behalf.and_then(|b| b.identity_store_arn.get()).unwrap_or("-");
            let user = behalf
                .and_then(|b| b.user_id.get())
                .or(principal_id)
                .unwrap_or("-");
            (
                "IdentityCenterUser",
                concat(&["identitycenter:", store, ":", user]),
            )
        }
        Some("Directory") => ("Directory", concat(&["directory:", acct, ":", name_or_id])),
        Some("Unknown") => ("Unknown", concat(&["unknown:", acct, ":", name_or_id])),
        Some(other) => match (other, arn) {
            ("Role", Some(arn)) => ("Role", arn.into()),
            (other, _) => {
                let who = arn.or(user_name).or(principal_id).unwrap_or("-");
                (
                    other,
                    format_compact!("{}:{acct}:{who}", other.to_ascii_lowercase()),
                )
            }
        },
        None => match id.invoked_by.get() {
            Some(service) => ("none", concat(&["service:", service])),
            None => (
                "none",
                concat(&["untyped:", acct, ":", principal_id.unwrap_or("-")]),
            ),
        },
    };

    Principal {
        key,
        kind: kind.into(),
        account_id: account.map(Into::into),
        arn: arn.map(Into::into),
        session,
    }
}

impl Principal {
    /// The bytes it holds: itself and its strings too long to be kept inline.
    pub fn bytes_held(&self) -> usize {
        let heap = |s: &CompactString| if s.is_heap_allocated() { s.capacity() } else { 0 };
        let optional = |s: &Option<CompactString>| s.as_ref().map_or(0, heap);
        std::mem::size_of::<Principal>()
            + heap(&self.key)
            + heap(&self.kind)
            + optional(&self.account_id)
            + optional(&self.arn)
            + optional(&self.session)
    }
}

/// The parts joined, allocated once at the final length (keys are built for every record).
fn concat(parts: &[&str]) -> CompactString {
    let mut out = CompactString::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

fn issuer<'r, 'a>(id: &'r UserIdentity<'a>) -> Option<&'r SessionIssuer<'a>> {
    id.session_context
        .as_ref()?
        .0
        .session_issuer
        .as_ref()
        .map(|i| &i.0)
}

/// `arn:aws:sts::123:assumed-role/Name/session` → `arn:aws:iam::123:role/Name`. The role's path is
/// not in the session ARN, so this is a fallback for records without a session issuer.
fn role_arn_from_session_arn(arn: &str) -> Option<CompactString> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let partition = parts.next()?;
    let _service = parts.next()?;
    let _region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?.strip_prefix("assumed-role/")?;
    let role = resource.split('/').next().filter(|r| !r.is_empty())?;
    Some(concat(&["arn:", partition, ":iam::", account, ":role/", role]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RawRecord;

    #[test]
    fn the_cache_reuses_a_principal_only_for_the_same_identity_and_recipient() {
        let mut cache = PrincipalCache::default();
        let derived = std::cell::Cell::new(0);
        let mut keys = std::collections::HashMap::new();
        let mut get = |identity: &str, recipient: Option<&str>| {
            let Known {
                principal,
                identity_key: key,
                hashes,
            } = cache.get(identity, recipient, || {
                derived.set(derived.get() + 1);
                let json = format!(r#"{{"userIdentity":{identity}}}"#);
                let r: RawRecord = serde_json::from_str(&json).unwrap();
                derive(r.user_identity.as_ref().map(|u| &u.0), recipient)
            });
            assert_eq!(hashes.partition, murmur2(principal.key.as_bytes()));
            assert_eq!(hashes.digest, key_digest(&principal.key));
            // A key stands for one text only, across recipients and cache clearings.
            if let Some(key) = key {
                assert_eq!(*keys.entry(key).or_insert_with(|| identity.to_owned()), identity);
            }
            principal
        };
        let no_account = r#"{"type":"AWSService","invokedBy":"a.amazonaws.com"}"#;
        let user = r#"{"type":"IAMUser","userName":"alice"}"#;
        let a = get(user, Some("111122223333"));
        let b = get(user, Some("111122223333"));
        assert!(Arc::ptr_eq(&a, &b));
        // The same text under another recipient account is another principal.
        let c = get(user, Some("444455556666"));
        assert_eq!(c.key, "iamuser:444455556666:alice");
        assert_eq!(a.key, "iamuser:111122223333:alice");
        get(no_account, None);
        assert_eq!(derived.get(), 3);
        for i in 0..(PRINCIPALS_REMEMBERED + 10) {
            get(&format!(r#"{{"type":"IAMUser","userName":"u{i}"}}"#), None);
        }
        // An identity too long to remember is derived each time, and right.
        let long = format!(
            r#"{{"type":"IAMUser","userName":"bob","pad":"{}"}}"#,
            "x".repeat(5000)
        );
        let before = derived.get();
        let d = get(&long, Some("111122223333"));
        let e = get(&long, Some("111122223333"));
        assert_eq!(derived.get(), before + 2);
        assert_eq!(
            (d.key.as_str(), e.key.as_str()),
            ("iamuser:111122223333:bob", "iamuser:111122223333:bob")
        );
        for (entries, _) in cache.remembered.held().into_iter().chain(cache.sessions.held()) {
            assert!(entries <= PRINCIPALS_REMEMBERED);
        }
        let long_digest = cache.digest(&long, Some("111122223333"));
        assert!(!cache.remembered.contains(&long_digest));
    }

    #[test]
    fn sessions_of_one_identity_share_its_principal_and_key() {
        let mut cache = PrincipalCache::default();
        let derived = std::cell::Cell::new(0);
        let mut get = |identity: &str| {
            let known = cache.get(identity, Some("111122223333"), || {
                derived.set(derived.get() + 1);
                let json = format!(r#"{{"userIdentity":{identity}}}"#);
                let r: RawRecord = serde_json::from_str(&json).unwrap();
                derive(r.user_identity.as_ref().map(|u| &u.0), Some("111122223333"))
            });
            (known.principal, known.identity_key.unwrap())
        };
        let session = |key: &str, created: &str, name: &str| {
            format!(
                r#"{{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/{name}","accessKeyId":"{key}",
                "sessionContext":{{"attributes":{{"creationDate":"{created}"}},"sessionIssuer":{{"arn":"arn:aws:iam::1:role/R"}}}}}}"#
            )
        };
        let (first, key) = get(&session("ASIAONE", "2026-03-02T08:00:00Z", "s"));
        let (second, again) = get(&session("ASIATWO", "2026-03-02T09:00:00Z", "s"));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!((key, derived.get()), (again, 1));
        // Another session name is another principal: its ARN differs.
        let (other, other_key) = get(&session("ASIAONE", "2026-03-02T08:00:00Z", "t"));
        assert_eq!(other.session.as_deref(), Some("t"));
        assert_ne!(other_key, key);

        // Spaced as a pretty-printer writes it, and with an escape in a credential.
        let spaced = |key: &str| {
            format!("{{ \"type\" : \"IAMUser\" , \"userName\" : \"bob\",\n  \"accessKeyId\" :\t\"{key}\" }}")
        };
        assert_eq!(get(&spaced(r#"AKIA\"ONE"#)).1, get(&spaced("AKIATWO")).1);

        // Text that reads like a credential key but is not one stays in the digest: an element
        // of a list, and a key's name inside a string.
        let listed = |n: u8| format!(r#"{{"type":"IAMUser","userName":"bob","tags":["accessKeyId","{n}"]}}"#);
        assert_ne!(get(&listed(1)).1, get(&listed(2)).1);
        let named = |n: u8| format!(r#"{{"type":"IAMUser","userName":"b\",\"accessKeyId\":\"{n}"}}"#);
        let (one, one_key) = get(&named(1));
        let (two, two_key) = get(&named(2));
        assert_ne!(one_key, two_key);
        assert_ne!(one.key, two.key);
    }

    #[test]
    fn credentials_are_cut_from_the_text_where_json_has_them() {
        let keys = credential_finders();
        let cut = |text: &str| {
            let mut out = Vec::new();
            String::from_utf8(without_credentials(text.as_bytes(), &keys, &mut out).to_vec()).unwrap()
        };
        for (text, left) in [
            (r#"{"accessKeyId":"A","x":1}"#, r#"{"accessKeyId":"","x":1}"#),
            (
                r#"{"accessKeyId":"K","a":{"creationDate":"2026"}}"#,
                r#"{"accessKeyId":"","a":{"creationDate":""}}"#,
            ),
            (r#"{"a":{"creationDate":"2026"}}"#, r#"{"a":{"creationDate":""}}"#),
            (
                r#"{"accessKeyId":"a\"b\\","n":"accessKeyId"}"#,
                r#"{"accessKeyId":"","n":"accessKeyId"}"#,
            ),
            (
                r#"{"accessKeyId":7,"creationDate":null}"#,
                r#"{"accessKeyId":7,"creationDate":null}"#,
            ),
            (r#"{"x":["accessKeyId","v"]}"#, r#"{"x":["accessKeyId","v"]}"#),
            // A string that never ends is left whole.
            (r#"{"accessKeyId":"abc"#, r#"{"accessKeyId":"abc"#),
            (r#"{"accessKeyId":"abc\"#, r#"{"accessKeyId":"abc\"#),
        ] {
            assert_eq!(cut(text), left, "{text}");
        }
        // Only the first of each is cut, and a creation time only after the access key.
        let twice = r#"{"accessKeyId":"A","x":{"accessKeyId":"B"}}"#;
        assert_eq!(cut(twice), r#"{"accessKeyId":"","x":{"accessKeyId":"B"}}"#);
        let reversed = r#"{"creationDate":"D","accessKeyId":"A"}"#;
        assert_eq!(cut(reversed), r#"{"creationDate":"D","accessKeyId":""}"#);
    }

    #[test]
    fn a_full_cache_keeps_the_identities_it_saw_before_filling() {
        let mut cache = PrincipalCache::default();
        let derived = std::cell::Cell::new(0);
        let mut get = |i: usize| {
            let identity = format!(r#"{{"type":"IAMUser","userName":"u{i}"}}"#);
            cache
                .get(&identity, None, || {
                    derived.set(derived.get() + 1);
                    let json = format!(r#"{{"userIdentity":{identity}}}"#);
                    let r: RawRecord = serde_json::from_str(&json).unwrap();
                    derive(r.user_identity.as_ref().map(|u| &u.0), None)
                })
                .identity_key
        };
        let first: Vec<_> = (0..PRINCIPALS_REMEMBERED).map(&mut get).collect();
        // One identity more than a generation holds: the first ones are not forgotten...
        get(PRINCIPALS_REMEMBERED);
        assert_eq!(derived.get(), PRINCIPALS_REMEMBERED + 1);
        for (i, key) in first.iter().enumerate().take(PRINCIPALS_REMEMBERED / 2) {
            // ...and keep their keys.
            assert_eq!(get(i), *key);
        }
        assert_eq!(derived.get(), PRINCIPALS_REMEMBERED + 1);
        // Two generations on, an identity not seen since is derived again, under a new key.
        for i in 0..2 * PRINCIPALS_REMEMBERED {
            get(10 * PRINCIPALS_REMEMBERED + i);
        }
        let again = get(PRINCIPALS_REMEMBERED - 1);
        assert_ne!(again, first[PRINCIPALS_REMEMBERED - 1]);
        let [(recent, _), (older, _)] = cache.remembered.held();
        assert!(recent + older <= 2 * PRINCIPALS_REMEMBERED);
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_its_principals_hold() {
        let mut cache = PrincipalCache::default();
        let pad = "x".repeat(LONGEST_IDENTITY_REMEMBERED - 64);
        for i in 0..3 * PRINCIPAL_BYTES_REMEMBERED / LONGEST_IDENTITY_REMEMBERED {
            // The name is in the principal's key: each principal holds about 4 KiB.
            let identity = format!(r#"{{"type":"IAMUser","userName":"u{i}{pad}"}}"#);
            let known = cache.get(&identity, None, || {
                let json = format!(r#"{{"userIdentity":{identity}}}"#);
                let r: RawRecord = serde_json::from_str(&json).unwrap();
                derive(r.user_identity.as_ref().map(|u| &u.0), None)
            });
            assert!(known.principal.bytes_held() > LONGEST_IDENTITY_REMEMBERED - 64);
            // `held` also checks the newer generation's running count against its entries.
            for (_, bytes) in cache.remembered.held().into_iter().chain(cache.sessions.held()) {
                assert!(bytes <= PRINCIPAL_BYTES_REMEMBERED);
            }
        }
    }

    fn principal_of(json: &str) -> Principal {
        let r: RawRecord = serde_json::from_str(json).unwrap();
        derive(
            r.user_identity.as_ref().map(|u| &u.0),
            r.recipient_account_id.get(),
        )
    }

    #[test]
    fn assumed_role_keys_on_the_role_and_keeps_the_session() {
        let p = principal_of(
            r#"{"userIdentity":{"type":"AssumedRole","principalId":"AROAX:alice",
              "arn":"arn:aws:sts::111122223333:assumed-role/path/Admin/alice","accountId":"111122223333",
              "sessionContext":{"sessionIssuer":{"type":"Role","arn":"arn:aws:iam::111122223333:role/path/Admin"}}}}"#,
        );
        assert_eq!(p.key, "arn:aws:iam::111122223333:role/path/Admin");
        assert_eq!(p.session.as_deref(), Some("alice"));
        assert_eq!(p.kind, "AssumedRole");
    }

    #[test]
    fn two_sessions_of_one_role_share_a_key() {
        let a = principal_of(
            r#"{"userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s1"}}"#,
        );
        let b = principal_of(
            r#"{"userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s2"}}"#,
        );
        assert_eq!(a.key, "arn:aws:iam::1:role/R");
        assert_eq!(a.key, b.key);
    }

    #[test]
    fn assumed_role_with_empty_issuer_and_no_arn_uses_the_role_id() {
        let p = principal_of(
            r#"{"userIdentity":{"type":"AssumedRole","principalId":"AROAQ:sess","accountId":"9",
              "sessionContext":{"sessionIssuer":{}}}}"#,
        );
        assert_eq!(p.key, "role:9:AROAQ");
        assert_eq!(p.session.as_deref(), Some("sess"));
    }

    #[test]
    fn every_type_has_a_key() {
        let cases = [
            (
                r#"{"type":"Root","accountId":"1","arn":"arn:aws:iam::1:root"}"#,
                "arn:aws:iam::1:root",
            ),
            (
                r#"{"type":"IAMUser","arn":"arn:aws:iam::1:user/bob"}"#,
                "arn:aws:iam::1:user/bob",
            ),
            (
                r#"{"type":"IAMUser","accountId":"1","userName":"bob"}"#,
                "iamuser:1:bob",
            ),
            (
                r#"{"type":"FederatedUser","arn":"arn:aws:sts::1:federated-user/bob"}"#,
                "arn:aws:sts::1:federated-user/bob",
            ),
            (
                r#"{"type":"AWSAccount","accountId":"2","principalId":"AROA:x"}"#,
                "awsaccount:2:AROA",
            ),
            (
                r#"{"type":"AWSService","invokedBy":"ec2.amazonaws.com"}"#,
                "service:ec2.amazonaws.com",
            ),
            (
                r#"{"type":"SAMLUser","userName":"ann","identityProvider":"idp"}"#,
                "saml:idp:ann",
            ),
            (
                r#"{"type":"WebIdentityUser","userName":"u","identityProvider":"accounts.google.com"}"#,
                "webidentity:accounts.google.com:u",
            ),
            (
                r#"{"type":"IdentityCenterUser","accountId":"1","onBehalfOf":{"userId":"u-1","identityStoreArn":"arn:store"}}"#,
                "identitycenter:arn:store:u-1",
            ),
            (
                r#"{"type":"Directory","accountId":"1","userName":"d"}"#,
                "directory:1:d",
            ),
            (
                r#"{"type":"Unknown","accountId":"1","userName":"x"}"#,
                "unknown:1:x",
            ),
            (
                r#"{"type":"Role","arn":"arn:aws:iam::1:role/R"}"#,
                "arn:aws:iam::1:role/R",
            ),
            (
                r#"{"type":"SomethingNew","accountId":"1","principalId":"p"}"#,
                "somethingnew:1:p",
            ),
            (
                r#"{"accountId":"1","invokedBy":"s3.amazonaws.com"}"#,
                "service:s3.amazonaws.com",
            ),
            (r#"{"accountId":"1"}"#, "untyped:1:-"),
            (r#"{}"#, "untyped:-:-"),
        ];
        for (identity, key) in cases {
            let p = principal_of(&format!(r#"{{"userIdentity":{identity}}}"#));
            assert_eq!(p.key, key, "for {identity}");
        }
    }

    #[test]
    fn missing_identity_is_anonymous_in_the_recipient_account() {
        let p = principal_of(r#"{"recipientAccountId":"123"}"#);
        assert_eq!(p.key, "anonymous:123");
        let p = principal_of(r#"{"userIdentity":null}"#);
        assert_eq!(p.key, "anonymous:-");
    }
}
