//! The `trailwatch` command: see `trailwatch --help` and the README.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use trailwatch::config::Settings;
use trailwatch::decode::FileSkip;
use trailwatch::generate::realistic::{generate_realistic, RealisticOptions};
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::labels::Labels;
use trailwatch::replay::{replay, scan_inputs, sort_inputs, Escaped, InputFile, Summary};
use trailwatch::rules::RuleSet;
use trailwatch::timerange::TimeRange;

/// Events are built on decode threads and freed on shard threads; mimalloc's per-thread heaps
/// take those cross-thread frees without the lock contention of the system allocator. Tuned at
/// start-up by [`trailwatch::allocator::configure`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trailwatch",
    version,
    about = "Anomaly detection for AWS CloudTrail: per-principal baselines, explainable anomalies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay log files and folders (recursively), writing anomalies as JSON lines.
    Replay {
        /// TOML configuration; every key has a default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of Sigma rules replacing the shipped ones.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Folder of Sigma rules loaded beside them (repeatable); a rule there that cannot be
        /// used is left out with its reason, and the others load.
        #[arg(long = "extra-rules")]
        extra_rules: Vec<PathBuf>,
        /// Where to write anomalies (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also write the end-of-run summary as JSON to this file.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Only files delivered at or after this time: RFC 3339 (2024-05-01T10:00:00Z) or a UTC
        /// date (2024-05-01). Read from the delivery time in CloudTrail's file names, else the
        /// file's modification time.
        #[arg(long)]
        since: Option<String>,
        /// Only files delivered before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Log files (.json, .json.gz, .jsonl), folders holding them, or S3 prefixes
        /// (s3://bucket/AWSLogs/...), fetched with the configuration's [s3] and [fetch] settings.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The streaming service: notifications in (Kafka or a folder), anomalies out, until SIGTERM.
    Run {
        /// TOML configuration (see deploy/trailwatch.toml).
        #[arg(long)]
        config: PathBuf,
        /// Folder of Sigma rules replacing the shipped ones.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Folder of Sigma rules loaded beside them (repeatable); a rule there that cannot be
        /// used is left out with its reason, and the others load.
        #[arg(long = "extra-rules")]
        extra_rules: Vec<PathBuf>,
        /// Stages this process runs with a Kafka source: `decode` (notifications to the events
        /// topic), `detect` (the events topic's partitions to anomalies) or `all` (both).
        #[arg(long, default_value = "all")]
        role: trailwatch::config::Role,
        /// Address for /metrics and the health probes, in place of `metrics.listen`: for
        /// several processes of one configuration on one host.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Write a synthetic trail with injected incidents and their labels.
    Generate(GenerateArgs),
    /// Validate rules, or run the test events embedded in them.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Generate a trail, replay it, and report which injected incidents were found.
    Demo {
        /// Where to write the trail (default: a temporary folder, removed afterwards).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to write anomalies (default: a summary line per anomaly on standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        trail: TrailArgs,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Parse and compile rules; report bad ones with file, line and reason.
    Check {
        /// Folder of rules (default: the shipped rules).
        dir: Option<PathBuf>,
        /// Folder of rules loaded beside them (repeatable): each of its rules is listed as
        /// loaded or left out with the reason; what is left out there does not fail the check.
        #[arg(long)]
        extra: Vec<PathBuf>,
    },
    /// Run every rule's embedded test events; fail on a wrong verdict.
    Test {
        /// Folder of rules (default: the shipped rules).
        dir: Option<PathBuf>,
        /// Also fail when a rule that raises alerts has no tests.
        #[arg(long)]
        strict: bool,
    },
    /// Show the ATT&CK techniques the rules cover, and which attack-emulation catalogue entries
    /// no rule flags.
    Coverage {
        /// Folder of rules (default: the shipped rules).
        dir: Option<PathBuf>,
        /// Catalogue of techniques and the rules that flag them (default: the shipped one).
        #[arg(long)]
        catalogue: Option<PathBuf>,
        /// Fail when a catalogue entry is not covered.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Folder to write the trail into.
    #[arg(long)]
    out: PathBuf,
    /// Record shapes: "classic" (a few short shapes, with labelled incidents) or "realistic"
    /// (production shapes: 200 calls over 40 services, nested and escaped documents, long-tailed
    /// sizes; for benchmarks, e.g. `--principals 5000 --days 30 --events-per-day 7`).
    #[arg(long, default_value = "classic")]
    shape: String,
    /// Realistic shape only: share of records (0 to 1) that a shipped rule matches; 0 gives a
    /// trail no shipped rule matches, a tenth or more an alert storm.
    #[arg(long, default_value_t = 0.001)]
    rule_share: f64,
    #[command(flatten)]
    trail: TrailArgs,
}

#[derive(clap::Args)]
struct TrailArgs {
    /// Seed: the same seed and options give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Days of activity.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Principals (at least 8).
    #[arg(long, default_value_t = 60)]
    principals: u32,
    /// Mean events per principal per active day.
    #[arg(long, default_value_t = 150)]
    events_per_day: u32,
    /// First day (UTC), YYYY-MM-DD.
    #[arg(long, default_value = "2026-03-02")]
    start: String,
}

impl TrailArgs {
    fn options(&self, out: PathBuf) -> anyhow::Result<GenerateOptions> {
        let start = chrono::NaiveDate::parse_from_str(&self.start, "%Y-%m-%d")
            .with_context(|| format!("--start: not a date: {:?}", self.start))?;
        anyhow::ensure!(
            self.days >= 10,
            "--days: at least 10, so that incidents fall after learning"
        );
        Ok(GenerateOptions {
            out,
            seed: self.seed,
            days: self.days,
            principals: self.principals,
            events_per_day: self.events_per_day,
            start: start
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp(),
        })
    }
}

fn main() -> ExitCode {
    trailwatch::allocator::configure();
    tracing_subscriber::fmt()
        .with_writer(|| QuietStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader of standard output that stopped reading (`trailwatch replay ... | head`) has
        // what it wanted: not a failure, as for any filter in a pipeline.
        Err(e) if is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            say(format_args!("error: {}\n", Escaped(&format!("{e:#}"))));
            ExitCode::FAILURE
        }
    }
}

/// Writes to standard error, ignoring a closed or failing one: what is said there is for a
/// reader, and one that went away must not stop (or crash) the process.
fn say(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Standard error for the log, its write errors ignored: the subscriber reports a failed write
/// with `eprintln!`, which panics when standard error is closed.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Set when standard output was found closed by its reader.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn is_closed_stdout(e: &anyhow::Error) -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
        && e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

/// Standard output, noting when its reader has gone (see [`is_closed_stdout`]).
struct Stdout(std::io::StdoutLock<'static>);

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).inspect_err(note_broken_pipe)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().inspect_err(note_broken_pipe)
    }
}

fn note_broken_pipe(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay {
            config,
            rules,
            extra_rules,
            output,
            summary: summary_path,
            since,
            until,
            paths,
        } => {
            let settings = load_settings(config.as_ref())?;
            let range = TimeRange::parse(since.as_deref(), until.as_deref())?;
            let rules = load_rules(
                rules.as_ref().or(settings.rules_dir.as_ref()),
                &extra(&settings, extra_rules),
            )?;
            let summary = replay_paths(&paths, range, &settings, rules, output.as_ref())?;
            say(format_args!("{}", summary.render()));
            if let Some(path) = summary_path {
                std::fs::write(&path, serde_json::to_vec_pretty(&summary.to_json())?)
                    .with_context(|| format!("--summary {}", path.display()))?;
            }
            Ok(())
        }
        Command::Generate(args) => {
            let options = args.trail.options(args.out)?;
            let report = match args.shape.as_str() {
                "classic" => generate(&options)?,
                "realistic" => {
                    anyhow::ensure!(
                        (0.0..=1.0).contains(&args.rule_share),
                        "--rule-share: between 0 and 1, got {}",
                        args.rule_share
                    );
                    generate_realistic(&RealisticOptions {
                        out: options.out.clone(),
                        seed: options.seed,
                        days: options.days,
                        principals: options.principals,
                        events_per_day: f64::from(options.events_per_day),
                        start: options.start,
                        rule_share: args.rule_share,
                        file_span: 300,
                    })?
                }
                other => anyhow::bail!("--shape: \"classic\" or \"realistic\", got {other:?}"),
            };
            say(format_args!(
                "wrote {} files, {} records, {} labelled events in {} incidents to {}\n",
                report.files,
                report.records,
                report.labeled,
                report.incidents.len(),
                options.out.display()
            ));
            Ok(())
        }
        Command::Demo { out, output, trail } => demo(out, output, trail),
        Command::Rules { action } => rules_command(action),
        Command::Run {
            config,
            rules,
            extra_rules,
            role,
            metrics_listen,
        } => {
            // Signals first: one that comes while the configuration, the rules or a backlog are
            // loading is kept for the service to act on, instead of ending the process at once
            // with no checkpoint and nothing flushed.
            let runtime = tokio::runtime::Runtime::new()?;
            let stop = {
                let _entered = runtime.enter();
                StopSignals::install().context("installing the SIGTERM and SIGINT handlers")?
            };
            let settings = Settings::load(&config)?;
            let rules = load_rules(
                rules.as_ref().or(settings.rules_dir.as_ref()),
                &extra(&settings, extra_rules),
            )?;
            let report = runtime.block_on(async {
                let mut run = settings.run.clone();
                run.role = role;
                if metrics_listen.is_some() {
                    run.metrics_listen = metrics_listen;
                }
                let metrics = std::sync::Arc::new(trailwatch::metrics::Metrics::new());
                trailwatch::run::run(settings, run, Some(rules), metrics, stop.received()).await
            });
            // The service has checkpointed and flushed what it did; a start-up step it left
            // waiting on a broker that does not answer is not waited for.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            let report = report?;
            say(format_args!(
                "stopped: {} notifications, {} files, {} records, {} anomalies, {} checkpoints, dead letters {:?}\n",
                report.notifications, report.files, report.records, report.anomalies, report.checkpoints, report.dead_letters
            ));
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; needs a Tokio runtime entered.
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT since the handlers were installed.
    async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutting down: finishing the batch in hand, then checkpointing");
    }
}

fn load_settings(path: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Ok(match path {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    })
}

/// The configuration's extra rule folders, then the command line's.
fn extra(settings: &Settings, mut from_cli: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut all = settings.rules_extra.clone();
    all.append(&mut from_cli);
    all
}

/// The rules in `dir`, or the shipped ones, and those of the `extra` folders beside them;
/// reports what was left out on standard error.
fn load_rules(dir: Option<&PathBuf>, extra: &[PathBuf]) -> anyhow::Result<Arc<RuleSet>> {
    let rules = match (dir, extra.is_empty()) {
        (Some(dir), true) => RuleSet::from_dir(dir).with_context(|| format!("rules in {}", dir.display()))?,
        (None, true) => RuleSet::builtin()?,
        (dir, false) => RuleSet::with_extra(dir.map(PathBuf::as_path), extra).context("loading the rules")?,
    };
    for problem in rules.unsupported.iter().chain(&rules.extra_left_out) {
        say(format_args!(
            "warning: rule left out: {}\n",
            Escaped(&problem.to_string())
        ));
    }
    if rules.other_logsource > 0 {
        say(format_args!(
            "note: {} rules for other log sources skipped\n",
            rules.other_logsource
        ));
    }
    Ok(Arc::new(rules))
}

fn rules_command(action: RulesAction) -> anyhow::Result<()> {
    match action {
        RulesAction::Check { dir, extra } => rules_check(dir, &extra),
        RulesAction::Test { dir, strict } => rules_test(dir, strict),
        RulesAction::Coverage {
            dir,
            catalogue,
            strict,
        } => rules_coverage(dir, catalogue, strict),
    }
}

/// `rules test`: every rule loads and gives each of its test events the verdict it expects;
/// `strict`: every rule that raises alerts has test events.
fn rules_test(dir: Option<PathBuf>, strict: bool) -> anyhow::Result<()> {
    let rules = load_rules(dir.as_ref(), &[])?;
    // Written like any other output: a reader that stops early ends the listing, not the process.
    let mut out = Stdout(std::io::stdout().lock());
    write_loaded(&mut out, &rules)?;
    let failures = rules.run_tests();
    for failure in &failures {
        writeln!(out, "FAIL {failure}")?;
    }
    for untested in &rules.untested {
        writeln!(
            out,
            "{} {untested}: no test events",
            if strict { "FAIL" } else { "note" }
        )?;
    }
    writeln!(out, "rule tests: {} failed", failures.len())?;
    let failed =
        !rules.unsupported.is_empty() || !failures.is_empty() || (strict && !rules.untested.is_empty());
    anyhow::ensure!(!failed, "rules did not pass");
    Ok(())
}

/// The line that says what a rule set holds.
fn write_loaded(out: &mut impl Write, rules: &RuleSet) -> std::io::Result<()> {
    writeln!(
        out,
        "{} rules loaded ({} thresholds), {} left out, {} for other log sources",
        rules.len(),
        rules.correlations(),
        rules.unsupported.len(),
        rules.other_logsource
    )
}

/// `rules check`: the rules of `dir` (or the shipped ones) must all load; those of the `extra`
/// folders are listed, each loaded or left out with its reason.
fn rules_check(dir: Option<PathBuf>, extra: &[PathBuf]) -> anyhow::Result<()> {
    let rules = load_rules(dir.as_ref(), extra)?;
    let mut out = Stdout(std::io::stdout().lock());
    write_loaded(&mut out, &rules)?;
    if !extra.is_empty() {
        let from_extra = rules
            .rules()
            .iter()
            .filter(|r| {
                extra
                    .iter()
                    .any(|dir| std::path::Path::new(&r.file).starts_with(dir))
            })
            .count();
        writeln!(
            out,
            "extra folders: {from_extra} rules loaded, {} left out",
            rules.extra_left_out.len()
        )?;
        for problem in &rules.extra_left_out {
            writeln!(out, "left out: {}", Escaped(problem))?;
        }
    }
    anyhow::ensure!(rules.unsupported.is_empty(), "rules did not pass");
    Ok(())
}

fn rules_coverage(dir: Option<PathBuf>, catalogue: Option<PathBuf>, strict: bool) -> anyhow::Result<()> {
    use trailwatch::rules::coverage::{Catalogue, Coverage};
    let rules = load_rules(dir.as_ref(), &[])?;
    let catalogue = match catalogue {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("--catalogue {}", path.display()))?;
            Catalogue::parse(&text).map_err(|e| anyhow::anyhow!("--catalogue {}: {e}", path.display()))?
        }
        None => Catalogue::builtin(),
    };
    let coverage = Coverage::of(&rules, &catalogue);
    print!("{}", coverage.render(&rules));
    anyhow::ensure!(
        !strict || coverage.uncovered().is_empty(),
        "{} catalogue entries have no rule",
        coverage.uncovered().len()
    );
    Ok(())
}

/// Replays `paths` (files, folders, `s3://` prefixes), the files delivered within `range`.
fn replay_paths(
    paths: &[PathBuf],
    range: TimeRange,
    settings: &Settings,
    rules: Arc<RuleSet>,
    output: Option<&PathBuf>,
) -> anyhow::Result<Summary> {
    let (prefixes, local): (Vec<&PathBuf>, Vec<&PathBuf>) = paths
        .iter()
        .partition(|p| p.to_str().is_some_and(|p| p.starts_with("s3://")));
    let local: Vec<PathBuf> = local.into_iter().cloned().collect();
    let listing = scan_inputs(&local)?;
    let (mut files, mut not_log_files) = (listing.files, listing.not_log_files);
    let mut outside_range = 0;
    if !range.is_open() {
        let before = files.len();
        files.retain(|f| {
            f.path()
                .is_some_and(|path| range.contains(local_delivery_time(path)))
        });
        outside_range += before - files.len();
    }
    if !prefixes.is_empty() {
        let fetcher = trailwatch::fetch::Fetcher::new(settings.replay_fetch());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for prefix in prefixes {
            let url = prefix.to_str().expect("an s3:// input is UTF-8");
            let (bucket, key) = url["s3://".len()..]
                .split_once('/')
                .unwrap_or((&url["s3://".len()..], ""));
            anyhow::ensure!(!bucket.is_empty(), "{url}: no bucket named");
            let found = runtime
                .block_on(fetcher.list(bucket, key, range))
                .with_context(|| format!("listing {url}"))?;
            files.extend(found.files.into_iter().map(|f| InputFile::object(f.object)));
            not_log_files += found.not_log_files;
            outside_range += found.outside_range;
        }
        sort_inputs(&mut files);
    }
    let bar = ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files ({per_sec}, eta {eta})",
        )
        .expect("the template is valid"),
    );
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("--output {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(Stdout(std::io::stdout().lock()))),
    };
    let progress = |n| bar.inc(n);
    let mut summary = replay(files, settings, Some(rules), &mut sink, &progress)?;
    bar.finish_and_clear();
    summary.add_unlisted(&listing.problems);
    if not_log_files > 0 {
        summary
            .files_skipped
            .insert(FileSkip::NotALogFile.as_str(), not_log_files as u64);
    }
    if outside_range > 0 {
        summary
            .files_skipped
            .insert(FileSkip::OutsideTimeRange.as_str(), outside_range as u64);
    }
    Ok(summary)
}

/// When a file on disk was delivered: the time in its CloudTrail name, else its modification time.
fn local_delivery_time(path: &std::path::Path) -> i64 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    trailwatch::decode::delivery_time(name).unwrap_or_else(|| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64)
    })
}

fn demo(out: Option<PathBuf>, output: Option<PathBuf>, trail: TrailArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = out.unwrap_or_else(|| temp.path().join("trail"));
    let options = trail.options(dir.clone())?;
    say(format_args!(
        "generating {} days for {} principals in {}\n",
        options.days,
        options.principals,
        dir.display()
    ));
    let report = generate(&options)?;
    let anomalies_path = output.unwrap_or_else(|| temp.path().join("anomalies.jsonl"));
    let summary = replay_paths(
        &[dir.join("AWSLogs")],
        TimeRange::default(),
        &Settings::default(),
        load_rules(None, &[])?,
        Some(&anomalies_path),
    )?;
    say(format_args!("{}", summary.render()));

    let labels = Labels::load(&dir.join("labels.jsonl"))?;
    let text = std::fs::read_to_string(&anomalies_path)?;
    let anomalies: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("reading anomalies back")?;
    let mut out = Stdout(std::io::stdout().lock());
    let evidence: Vec<Vec<String>> = anomalies
        .iter()
        .map(|a| {
            a["evidence"]["event_ids"]
                .as_array()
                .map(|ids| ids.iter().filter_map(|i| i.as_str().map(String::from)).collect())
                .unwrap_or_default()
        })
        .collect();
    for (a, ids) in anomalies.iter().zip(&evidence) {
        let incident = ids.iter().find_map(|id| labels.incident_of(id)).unwrap_or("-");
        writeln!(
            out,
            "{:<17} {:<8} {:<48} {}  [incident: {incident}]",
            a["kind"].as_str().unwrap_or(""),
            a["severity"].as_str().unwrap_or(""),
            a["principal"]["key"].as_str().unwrap_or(""),
            a["reason"].as_str().unwrap_or("")
        )?;
    }
    let score = labels.score_evidence(evidence.iter().map(Vec::as_slice));
    let found = score.found.values().filter(|n| **n > 0).count();
    let benign = summary.events.saturating_sub(report.labeled as u64);
    writeln!(out, "\nincidents found: {found} of {}", score.found.len())?;
    for (incident, n) in &score.found {
        writeln!(
            out,
            "  {incident:<22} {}",
            if *n > 0 {
                format!("found ({n} anomalies)")
            } else {
                "MISSED".into()
            }
        )?;
    }
    writeln!(
        out,
        "false positives: {} anomalies on {benign} benign events ({:.3} per 1,000)",
        score.false_positives,
        score.false_positives as f64 * 1000.0 / benign.max(1) as f64
    )?;
    anyhow::ensure!(
        score.missed().is_empty(),
        "missed incidents: {}",
        score.missed().join(", ")
    );
    Ok(())
}
