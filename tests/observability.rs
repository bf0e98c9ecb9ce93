//! Metrics and deployment files: a real Prometheus scrapes a running `trailwatch run`; promtool
//! accepts the Prometheus configuration and alerting rules; every metric the dashboard and the
//! alerts use is exported; the Kubernetes manifests parse and have the expected kinds.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, generate, manifest_dir, path_str, Server, BIN};
use serde_json::Value;

/// A plain HTTP/1.1 GET on loopback; returns (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Metric names in Prometheus text output.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// `trailwatch_*` identifiers in a text (PromQL expressions, a dashboard).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("trailwatch_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

/// Starts `trailwatch run` on a folder holding a generated trail, serving metrics on a free port.
fn start_trailwatch(dir: &Path) -> (Server, u16) {
    let trail = dir.join("trail");
    generate(&trail, 4, 10, 10, 30);
    std::fs::remove_file(trail.join("labels.jsonl")).unwrap();
    let port = free_port();
    let config = dir.join("trailwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"folder\"\nfolder = \"{}\"\npoll_interval = \"200ms\"\n\
             [sink]\nkind = \"file\"\npath = \"{}\"\ndead_letters = \"{}\"\n\
             [checkpoint]\nurl = \"{}\"\ninterval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            trail.display(),
            dir.join("anomalies.jsonl").display(),
            dir.join("dead.jsonl").display(),
            dir.join("checkpoint").display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", &path_str(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Server(child), port)
}

#[test]
fn prometheus_scrapes_a_running_service_and_every_dashboard_and_alert_metric_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (_trailwatch, port) = start_trailwatch(dir.path());
    assert_eq!(
        wait_until("/healthz", Duration::from_secs(30), || get(port, "/healthz")).0,
        200
    );
    wait_until("/readyz", Duration::from_secs(30), || {
        get(port, "/readyz").filter(|(s, _)| *s == 200)
    });
    // Wait until the trail is processed and a checkpoint written.
    let metrics = wait_until("the trail to be processed", Duration::from_secs(60), || {
        let (_, body) = get(port, "/metrics")?;
        let done = body.lines().any(|l| {
            l.starts_with("trailwatch_checkpoint_last_success_timestamp_seconds ") && !l.ends_with(" 0")
        }) && body
            .lines()
            .any(|l| l.starts_with("trailwatch_consumer_lag{partition=\"folder\"} 0"));
        done.then_some(body)
    });

    let exported = exported_names(&metrics);
    let deploy = manifest_dir().join("deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/trailwatch-dashboard.json")).unwrap();
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = referenced_names(&dashboard)
        .into_iter()
        .chain(referenced_names(&alerts))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exported: {missing:?}\n{metrics}"
    );

    // A real Prometheus scrapes it; the series come back through its HTTP API.
    let prom_port = free_port();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trailwatch\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let _prometheus = Server(
        Command::new("prometheus")
            .args([
                &format!("--config.file={}", prom_dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package) starts: scripts/test-deps.sh installs it"),
    );
    let files_decoded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trailwatch_files_total{outcome=\"decoded\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(files_decoded > 100.0);
    let result = wait_until(
        "Prometheus to have scraped trailwatch",
        Duration::from_secs(60),
        || {
            let (status, body) = get(
                prom_port,
                "/api/v1/query?query=trailwatch_files_total%7Boutcome%3D%22decoded%22%7D",
            )?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())).then_some(v)
        },
    );
    let sample = &result["data"]["result"][0];
    assert_eq!(sample["metric"]["job"], "trailwatch");
    assert_eq!(
        sample["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
        files_decoded
    );
    let up = wait_until("up", Duration::from_secs(30), || {
        let (_, body) = get(prom_port, "/api/v1/query?query=up")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str().map(String::from)
    });
    assert_eq!(up, "1");
}

#[test]
fn promtool_accepts_the_prometheus_configuration_and_alerting_rules() {
    let deploy = manifest_dir().join("deploy/prometheus");
    for (what, file) in [("config", "prometheus.yml"), ("rules", "alerts.yml")] {
        let out = Command::new("promtool")
            .args(["check", what, &path_str(&deploy.join(file))])
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check {what} {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kubernetes_manifests_parse_and_have_the_expected_kinds() {
    let dir = manifest_dir().join("deploy/kubernetes");
    let mut kinds = BTreeSet::new();
    let mut deployment = None;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", path.display()))
                .to_owned();
            assert!(
                value["apiVersion"].is_string(),
                "{}: {kind} without apiVersion",
                path.display()
            );
            if kind == "Deployment" {
                deployment = Some(value.clone());
            }
            kinds.insert(kind);
        }
    }
    let want: BTreeSet<String> = [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, want);
    let d = deployment.unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    let compose: Value = serde::Deserialize::deserialize(yaml_serde::Deserializer::from_str(
        &std::fs::read_to_string(manifest_dir().join("deploy/compose.yaml")).unwrap(),
    ))
    .unwrap();
    let services: BTreeSet<&str> = compose["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(services, ["grafana", "kafka", "prometheus", "trailwatch"].into());
}
