//! Metrics and deployment files: a real Prometheus scrapes a running `trailwatch run` (the folder
//! service) and a detect process of a cluster (on librdkafka's in-process mock cluster); every
//! metric the dashboard and the alerts use is exported, and every dashboard query and alert
//! expression is answered by that Prometheus; the dashboard imports into any Grafana (a datasource
//! variable) and filters every query by the `job` and `instance` variables; promtool accepts the
//! Prometheus configuration and alerting rules and passes the rules' unit tests; the Kubernetes
//! manifests parse and have the expected kinds.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, generate, manifest_dir, path_str, Server, BIN};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

/// The detect process's state partitions (events-topic partitions).
const DETECT_PARTITIONS: i32 = 4;
/// The metrics the dashboard's Cluster row shows.
const CLUSTER_METRICS: [&str; 9] = [
    "trailwatch_partitions_owned",
    "trailwatch_partition_restore_seconds_bucket",
    "trailwatch_partition_restore_bytes_bucket",
    "trailwatch_rebalances_total",
    "trailwatch_events_lag",
    "trailwatch_partition_state_age_seconds",
    "trailwatch_late_events_total",
    "trailwatch_events_held",
    "trailwatch_events_produced_total",
];
/// The matchers every dashboard query puts on every trailwatch metric.
const FILTERS: [&str; 2] = ["job=~\"$job\"", "instance=~\"$instance\""];

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

/// Starts `trailwatch run --role detect` on a mock cluster's events topic, with a mark on each
/// partition so that the consumer has a position (and a lag) on every partition it owns.
fn start_detect(
    dir: &Path,
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> (Server, u16) {
    let events = "trailwatch-events";
    // The mock cluster takes no CreateTopics requests: the events topic is made here.
    cluster.create_topic(events, DETECT_PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for partition in 0..DETECT_PARTITIONS {
        producer
            .send(
                BaseRecord::to(events)
                    .partition(partition)
                    .key("")
                    .payload(r#"{"mark":{"source":0,"sources":1,"time":0}}"#),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let port = free_port();
    let config = dir.join("detect.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\npartitions = {DETECT_PARTITIONS}\n\
             [kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"trailwatch-observability\"\n\
             [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [sink]\nkind = \"file\"\npath = \"{}\"\ndead_letters = \"{}\"\n\
             [checkpoint]\nurl = \"{}\"\ninterval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("detect-anomalies.jsonl").display(),
            dir.join("detect-dead.jsonl").display(),
            dir.join("detect-checkpoint").display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--role", "detect", "--config", &path_str(&config)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("detect.log")).unwrap())
        .spawn()
        .unwrap();
    (Server(child), port)
}

/// The value of an unlabelled sample, or of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn load_dashboard() -> Value {
    let text =
        std::fs::read_to_string(manifest_dir().join("deploy/grafana/trailwatch-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel query of the dashboard, by panel title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect()
}

/// A dashboard query as Prometheus gets it with "All" selected in every variable.
fn with_all_selected(expr: &str) -> String {
    expr.replace("$job", ".*").replace("$instance", ".*")
}

/// Every alerting rule of alerts.yml.
fn alert_rules() -> Vec<Value> {
    let text = std::fs::read_to_string(manifest_dir().join("deploy/prometheus/alerts.yml")).unwrap();
    let rules: Value = serde::Deserialize::deserialize(yaml_serde::Deserializer::from_str(&text)).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn prometheus_scrapes_a_running_service_and_every_dashboard_and_alert_metric_exists() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    let (_detect, detect_port) = start_detect(dir.path(), &cluster);
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

    // The detect process owns every partition of the events topic, has taken up (restored) each
    // and reports each one's snapshot age and lag.
    let detect_log = || std::fs::read_to_string(dir.path().join("detect.log")).unwrap_or_default();
    let detect_metrics = wait_until(
        "the detect process to own every partition and report its lag",
        Duration::from_secs(90),
        || {
            let (_, body) = get(detect_port, "/metrics")?;
            let owned = sample(&body, "trailwatch_partitions_owned") == Some(f64::from(DETECT_PARTITIONS));
            let per_partition = |name: &str| {
                body.lines()
                    .filter(|l| l.starts_with(&format!("{name}{{partition=\"")))
                    .count()
                    == DETECT_PARTITIONS as usize
            };
            (owned
                && per_partition("trailwatch_events_lag")
                && per_partition("trailwatch_partition_state_age_seconds"))
            .then_some(body)
        },
    );
    assert!(
        sample(&detect_metrics, "trailwatch_rebalances_total{kind=\"assign\"}").unwrap() >= 1.0,
        "{detect_metrics}\n{}",
        detect_log()
    );
    assert_eq!(
        sample(&detect_metrics, "trailwatch_partition_restore_seconds_count"),
        Some(f64::from(DETECT_PARTITIONS))
    );
    // The folder service owns no events-topic partitions; it starts the cluster counters at zero.
    assert_eq!(sample(&metrics, "trailwatch_partitions_owned"), Some(0.0));
    assert_eq!(
        sample(&metrics, "trailwatch_rebalances_total{kind=\"revoke\"}"),
        Some(0.0)
    );

    let exported: BTreeSet<String> = exported_names(&metrics)
        .into_iter()
        .chain(exported_names(&detect_metrics))
        .collect();
    // What the panels, the variables and the alert expressions query (not what their texts
    // mention).
    let d = load_dashboard();
    let queried = dashboard_queries(&d)
        .into_iter()
        .map(|(_, expr)| expr)
        .chain(
            d["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["query"].as_str().map(String::from)),
        )
        .chain(
            alert_rules()
                .iter()
                .map(|r| r["expr"].as_str().unwrap().to_owned()),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let used = referenced_names(&queried);
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exported: {missing:?}\n{metrics}\n{detect_metrics}"
    );
    for metric in CLUSTER_METRICS {
        assert!(used.contains(metric), "the dashboard does not query {metric}");
    }

    // A real Prometheus scrapes it; the series come back through its HTTP API.
    let prom_port = free_port();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trailwatch\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\", \"127.0.0.1:{detect_port}\"]\n"),
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
                &format!(
                    "/api/v1/query?query={}",
                    encode(&format!(
                        "trailwatch_files_total{{outcome=\"decoded\", instance=\"127.0.0.1:{port}\"}}"
                    ))
                ),
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
    let up = wait_until("both targets up", Duration::from_secs(30), || {
        let (_, body) = get(prom_port, "/api/v1/query?query=sum(up)")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .filter(|v| *v == "2")
            .map(String::from)
    });
    assert_eq!(up, "2");

    // The dashboard's variables find the job and both processes...
    let values = |label: &str, matcher: &str| -> BTreeSet<String> {
        let (status, body) = get(
            prom_port,
            &format!("/api/v1/label/{label}/values?match[]={}", encode(matcher)),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    };
    let variable = |name: &str| -> String {
        d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["query"].as_str())
            .unwrap()
            .to_owned()
    };
    // label_values(METRIC{MATCHERS}, LABEL): the series selector and the label.
    let parse = |query: &str| -> (String, String) {
        let inner = query
            .strip_prefix("label_values(")
            .unwrap()
            .strip_suffix(')')
            .unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        (with_all_selected(selector.trim()), label.trim().to_owned())
    };
    let (selector, label) = parse(&variable("job"));
    assert_eq!(values(&label, &selector), ["trailwatch".to_owned()].into());
    let (selector, label) = parse(&variable("instance"));
    assert_eq!(
        values(&label, &selector),
        [format!("127.0.0.1:{port}"), format!("127.0.0.1:{detect_port}")].into()
    );
    // ...and Prometheus answers every panel query (with "All" selected) and every alert
    // expression; the Cluster row's queries return series.
    let query = |expr: &str| -> Value {
        let (status, body) = get(prom_port, &format!("/api/v1/query?query={}", encode(expr))).unwrap();
        assert_eq!(status, 200, "{expr}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v
    };
    for (title, expr) in dashboard_queries(&d) {
        let expr = with_all_selected(&expr);
        let v = query(&expr);
        let cluster = CLUSTER_METRICS
            .iter()
            .any(|m| referenced_names(&expr).contains(*m));
        if cluster && !expr.contains("histogram_quantile") && !expr.contains("rate(") {
            assert!(
                v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
                "{title}: {expr} returns no series: {v}"
            );
        }
    }
    for rule in alert_rules() {
        query(rule["expr"].as_str().unwrap());
    }
    let owned = query(&with_all_selected(
        "sum(trailwatch_partitions_owned{job=~\"$job\", instance=~\"$instance\"})",
    ));
    assert_eq!(
        owned["data"]["result"][0]["value"][1].as_str().unwrap(),
        DETECT_PARTITIONS.to_string()
    );
}

#[test]
fn the_dashboard_imports_into_any_grafana_and_filters_every_query_by_job_and_instance() {
    let d = load_dashboard();
    // No fixed datasource: every datasource reference names the variable.
    fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "datasource" {
                        out.push(v);
                    }
                    datasources(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&d, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        assert_eq!(r["uid"], "${datasource}", "a fixed datasource: {r}");
        assert_eq!(r["type"], "prometheus", "{r}");
    }
    let text = serde_json::to_string(&d).unwrap();
    assert!(!text.contains(r#""uid":"prometheus""#));

    let variables = d["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name}"))
    };
    let ds = variable("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for (name, selector) in [
        ("job", "trailwatch_build_info"),
        ("instance", "trailwatch_build_info{job=~\"$job\"}"),
    ] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(v["query"], format!("label_values({selector}, {name})"), "{name}");
    }

    // Every trailwatch metric of every query carries both filters.
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 30, "{}", queries.len());
    for (title, expr) in &queries {
        let mut rest = expr.as_str();
        let mut metrics = 0;
        while let Some(at) = rest.find("trailwatch_") {
            rest = &rest[at..];
            let name_len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let matchers = rest[name_len..]
                .strip_prefix('{')
                .and_then(|m| m.split_once('}'))
                .unwrap_or_else(|| panic!("{title}: {} without matchers in {expr}", &rest[..name_len]))
                .0;
            for filter in FILTERS {
                assert!(
                    matchers.split(',').any(|m| m.trim() == filter),
                    "{title}: {} lacks {filter} in {expr}",
                    &rest[..name_len]
                );
            }
            metrics += 1;
            rest = &rest[name_len..];
        }
        assert!(metrics > 0, "{title}: no trailwatch metric in {expr}");
    }

    // The Cluster row: a row panel, then panels showing each cluster metric.
    let panels = d["panels"].as_array().unwrap();
    let row = panels
        .iter()
        .find(|p| p["type"] == "row" && p["title"] == "Cluster")
        .expect("a Cluster row");
    let row_y = row["gridPos"]["y"].as_u64().unwrap();
    let below: String = panels
        .iter()
        .filter(|p| p["type"] != "row" && p["gridPos"]["y"].as_u64().unwrap() > row_y)
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let shown = referenced_names(&below);
    for metric in CLUSTER_METRICS {
        assert!(shown.contains(metric), "the Cluster row does not show {metric}");
    }
    assert!(below
        .contains("histogram_quantile(0.5, sum by (le) (rate(trailwatch_partition_restore_seconds_bucket"));
    assert!(below
        .contains("histogram_quantile(0.99, sum by (le) (rate(trailwatch_partition_restore_seconds_bucket"));
    assert!(below.contains("rate(trailwatch_rebalances_total{"));
    // Panel ids are unique, and panels of a row do not overlap.
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    for (i, a) in panels.iter().enumerate() {
        for b in &panels[i + 1..] {
            let (ax, ay, aw, ah) = grid(a);
            let (bx, by, bw, bh) = grid(b);
            assert!(
                ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay,
                "{} overlaps {}",
                a["title"],
                b["title"]
            );
        }
    }
}

fn grid(p: &Value) -> (u64, u64, u64, u64) {
    let g = &p["gridPos"];
    let n = |k: &str| g[k].as_u64().unwrap();
    (n("x"), n("y"), n("w"), n("h"))
}

#[test]
fn alerts_cover_the_cluster_and_say_what_to_do() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for (name, metric) in [
        ("TrailwatchStatePartitionUnowned", "trailwatch_partitions_owned"),
        (
            "TrailwatchPartitionRestoreSlow",
            "trailwatch_partition_restore_seconds_bucket",
        ),
        ("TrailwatchEventsLagGrowing", "trailwatch_events_lag"),
    ] {
        assert!(names.contains(name), "no {name}");
        let rule = rules.iter().find(|r| r["alert"] == name).unwrap();
        assert!(
            referenced_names(rule["expr"].as_str().unwrap()).contains(metric),
            "{name}"
        );
    }
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key].as_str().is_some_and(|s| s.len() > 20),
                "{name}: no {key}"
            );
        }
        assert!(rule["labels"]["severity"].is_string(), "{name}: no severity");
    }
}

#[test]
fn promtool_accepts_the_prometheus_configuration_and_alerting_rules() {
    let deploy = manifest_dir().join("deploy/prometheus");
    for (what, file) in [
        ("check config", "prometheus.yml"),
        ("check rules", "alerts.yml"),
        // The rules' unit tests: when each alert fires, and when not.
        ("test rules", "alerts_test.yml"),
    ] {
        let out = Command::new("promtool")
            .args(what.split(' ').chain([path_str(&deploy.join(file)).as_str()]))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {what} {file}:\n{}{}",
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
