//! Memory bounds, measured on the running binary. Alone in its test binary: the peak measured is
//! that of the largest child process this binary has waited for.

mod common;

use common::*;

/// Peak resident memory, in bytes, of the largest child process waited for so far.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage writes one rusage struct, which is zero-initialisable.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(status, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn a_gzip_bomb_never_holds_more_than_the_file_limit() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 GiB of zeros in 64 members of 16 MiB: about a megabyte on disk.
    let member = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 16 << 20]).unwrap();
        enc.finish().unwrap()
    };
    let bomb = tmp.path().join("bomb.json.gz");
    std::fs::write(&bomb, member.repeat(64)).unwrap();
    let limit: u64 = 256 << 20;
    let config = tmp.path().join("limit.toml");
    std::fs::write(
        &config,
        format!("[replay]\nworkers = 1\nmax_file_bytes = {limit}\n"),
    )
    .unwrap();

    let (_, summary) = replay_with(&[&bomb], tmp.path(), &["--config", &path_str(&config)]);
    assert_eq!(summary["files"]["failed"]["too_large"], 1, "{summary}");

    // The limit's worth of inflated text, and what the process holds anyway (rules, tables,
    // the first room reserved from the trailer): not one and a half or twice the limit.
    let peak = children_peak_rss();
    assert!(peak > limit, "the bomb was inflated up to the limit: {peak}");
    assert!(
        peak < limit + (80 << 20),
        "peak resident memory {} MiB for a limit of {} MiB",
        peak >> 20,
        limit >> 20
    );
}
