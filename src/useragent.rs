//! User-agent families: the product behind a `userAgent`, without versions.
//!
//! In: the `userAgent` text. Out: a short family name drawn from the product token, so that an SDK
//! upgrade is not a new value but a switch from the CLI to a browser, or from an SDK to curl, is.
//! A penetration-testing distribution named in the agent (Kali, Parrot, Pentoo) is appended, since
//! the same SDK run from one is exactly the change a baseline should notice.

use std::sync::Arc;

use compact_str::{format_compact, CompactString};

use crate::generations::Generations;

const MAX_FAMILY_LEN: usize = 32;

/// The family of a user agent.
pub fn family(agent: &str) -> CompactString {
    // Case-insensitive searches look for lowercase needles in a lowercase copy, each with the
    // library's substring search: comparing every window of the agent to each needle cost more
    // than the rest of a new agent's handling.
    let lower = agent.to_ascii_lowercase();
    let has = |needle: &str| memchr::memmem::find(lower.as_bytes(), needle.as_bytes()).is_some();
    let base = base_family(agent, &has);
    match ["kali", "parrot", "pentoo"].into_iter().find(|os| has(os)) {
        Some(os) => format_compact!("{base} ({os})"),
        None => base,
    }
}

/// `lower_has` says whether the agent, lowercased, contains a lowercase needle.
fn base_family(agent: &str, lower_has: &impl Fn(&str) -> bool) -> CompactString {
    let trimmed = agent.trim().trim_start_matches('[');
    if trimmed.is_empty() {
        return "empty".into();
    }
    if trimmed == "AWS Internal" || trimmed.starts_with("aws-internal") {
        return "aws-internal".into();
    }
    if trimmed.ends_with(".amazonaws.com") {
        return if trimmed == "console.amazonaws.com" || trimmed == "signin.amazonaws.com" {
            "console".into()
        } else {
            "aws-service".into()
        };
    }
    // Trimming takes away no letters, so the whole agent's lowercase copy answers for it.
    if lower_has("terraform") {
        return "terraform".into();
    }
    if trimmed.starts_with("Mozilla/") {
        return "browser".into();
    }
    let token = trimmed.split([' ', '/', ',', ']', '(']).next().unwrap_or(trimmed);
    let mut family: CompactString = token.chars().take(MAX_FAMILY_LEN).collect();
    family.make_ascii_lowercase();
    family
}

/// User agents already seen, each with its family. Agents repeat heavily and classifying one scans
/// it several times, so families are remembered, and the events of one agent share its text
/// rather than each copying it. Agents are remembered by a digest of their text (xxh3-128 under a
/// seed drawn for the process, as the principal cache's identities are), so a lookup compares no
/// text.
///
/// Bounded: two generations (see `crate::generations`) of at most `AGENTS_REMEMBERED` agents.
/// The map used to be emptied when it held that many; a month of an organisation's agents is
/// more than that (the AWS CLI names each command it runs in its agent), so after each emptying
/// the agents in use were classified and copied again.
pub struct AgentFamilies {
    families: Generations<u128, (Arc<str>, CompactString)>,
    seed: u64,
}

impl Default for AgentFamilies {
    fn default() -> Self {
        AgentFamilies {
            families: Generations::new(AGENTS_REMEMBERED, usize::MAX),
            seed: crate::principal::random_seed(),
        }
    }
}

const AGENTS_REMEMBERED: usize = 4096;

/// Longer agents are classified each time rather than remembered, so that the memory stays
/// bounded in bytes whatever a file holds.
const LONGEST_AGENT_REMEMBERED: usize = 1024;

impl AgentFamilies {
    pub fn family(&mut self, agent: &str) -> CompactString {
        self.agent(agent).1
    }

    /// The agent's shared text and its family.
    pub fn agent(&mut self, agent: &str) -> (Arc<str>, CompactString) {
        if agent.len() > LONGEST_AGENT_REMEMBERED {
            return (agent.into(), family(agent));
        }
        let digest = xxhash_rust::xxh3::xxh3_128_with_seed(agent.as_bytes(), self.seed);
        let make = || ((Arc::from(agent), family(agent)), 0);
        self.families
            .with(digest, make, |(text, family)| (Arc::clone(text), family.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::family;

    #[test]
    fn families_ignore_versions() {
        assert_eq!(
            family("aws-cli/2.13.5 Python/3.11.4 Linux/5.15 exe/x86_64"),
            "aws-cli"
        );
        assert_eq!(family("aws-cli/1.18.0 Python/2.7"), "aws-cli");
        assert_eq!(
            family("Boto3/1.28.0 md/Botocore#1.31.0 ua/2.0 os/linux#5.10"),
            "boto3"
        );
        assert_eq!(
            family("aws-sdk-go-v2/1.21.0 os/linux lang/go#1.21"),
            "aws-sdk-go-v2"
        );
        assert_eq!(
            family("[S3Console/0.4, aws-internal/3 aws-sdk-java/1.12]"),
            "s3console"
        );
    }

    #[test]
    fn well_known_agents_have_fixed_families() {
        assert_eq!(family("Mozilla/5.0 (Windows NT 10.0; Win64; x64)"), "browser");
        assert_eq!(family("console.amazonaws.com"), "console");
        assert_eq!(family("ec2.amazonaws.com"), "aws-service");
        assert_eq!(family("AWS Internal"), "aws-internal");
        assert_eq!(
            family("APN/1.0 HashiCorp/1.0 Terraform/1.5.7 terraform-provider-aws/5.0"),
            "terraform"
        );
        assert_eq!(family(""), "empty");
    }

    #[test]
    fn pentest_distributions_are_marked() {
        assert_eq!(
            family("Boto3/1.28.0 md/Botocore#1.31.0 os/linux#6.5.0-kali3-amd64"),
            "boto3 (kali)"
        );
        assert_eq!(
            family("aws-cli/2.0 Python/3 Linux/6.1-parrot"),
            "aws-cli (parrot)"
        );
        assert_eq!(
            family("Boto3/1.34 os/linux#6.6.9-amd64-KALI Terraform-like"),
            "terraform (kali)"
        );
        assert_eq!(family("aws-cli/2.0 Linux/6.1 PenToo"), "aws-cli (pentoo)");
    }

    #[test]
    fn agents_are_shared_and_long_ones_not_remembered() {
        let mut agents = super::AgentFamilies::default();
        let (a, family) = agents.agent("aws-cli/2.0 Python/3");
        let (b, _) = agents.agent("aws-cli/2.0 Python/3");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(family, "aws-cli");
        let long = format!("Boto3/1.0 kali {}", "x".repeat(2000));
        let (text, family) = agents.agent(&long);
        assert_eq!((&*text, family.as_str()), (long.as_str(), "boto3 (kali)"));
        assert_eq!(agents.families.held()[0].0, 1);
    }

    #[test]
    fn agents_in_use_stay_remembered_among_many_seen_once() {
        let mut agents = super::AgentFamilies::default();
        let (first, _) = agents.agent("aws-cli/2.0 md/command#s3.ls");
        for i in 0..3 * super::AGENTS_REMEMBERED {
            let (again, _) = agents.agent("aws-cli/2.0 md/command#s3.ls");
            assert!(std::sync::Arc::ptr_eq(&first, &again), "after {i} others");
            let (other, family) = agents.agent(&format!("Boto3/1.{i} md/Botocore#1.{i}"));
            assert_eq!((family.as_str(), &other[..6]), ("boto3", "Boto3/"));
        }
        for (held, _) in agents.families.held() {
            assert!(held <= super::AGENTS_REMEMBERED);
        }
    }

    #[test]
    fn long_tokens_are_capped() {
        assert_eq!(family(&"x".repeat(500)).len(), 32);
    }
}
