//! Synthetic trails: many principals with habits and daily rhythms, and injected incidents.
//!
//! In: [`GenerateOptions`]. Out: gzip log files in CloudTrail's S3 key layout under the output
//! folder (`AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/<account>_CloudTrail_<region>_<time>_<id>.json.gz`),
//! a digest file per region and day (which replay must skip), and `labels.jsonl`, one line per
//! injected event: `{"event_id":"...","incident":"..."}`.
//!
//! The trail behaves like a real one where detectors care: humans work weekdays in office hours,
//! service roles run around the clock, global services log in us-east-1, files hold five minutes
//! of events with a few records delivered a file late, and a few records are delivered twice.
//! Every principal uses each of its habits on its first day, so that once past learning a benign
//! principal has no new values left to show. Benign work that resembles attacks runs beside the
//! habits (see `plan_lookalikes`). The same options and seed give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::event::format_time;

pub mod realistic;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub days: u32,
    pub principals: u32,
    /// Mean events per principal per active day.
    pub events_per_day: u32,
    /// Unix seconds of the first day's midnight (UTC).
    pub start: i64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            out: PathBuf::from("trail"),
            seed: 1,
            days: 14,
            principals: 60,
            events_per_day: 150,
            // 2026-03-02T00:00:00Z, a Monday.
            start: 1_772_409_600,
        }
    }
}

/// What was generated.
#[derive(Debug, Default)]
pub struct GenerateReport {
    pub files: usize,
    pub records: usize,
    pub labeled: usize,
    pub incidents: BTreeMap<&'static str, usize>,
}

pub const INCIDENTS: [&str; 7] = [
    "stolen_credentials",
    "recon_access_denied",
    "dormant_admin",
    "cloudtrail_tampering",
    "console_login_no_mfa",
    "root_usage",
    "api_rate_spike",
];

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
const ACCOUNTS: [&str; 2] = ["111122223333", "444455556666"];
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const GLOBAL: [&str; 2] = ["iam.amazonaws.com", "sts.amazonaws.com"];

/// Services and the calls habits are drawn from.
const CATALOG: &[(&str, &[&str])] = &[
    (
        "s3.amazonaws.com",
        &[
            "ListBuckets",
            "GetBucketLocation",
            "GetBucketPolicy",
            "GetBucketAcl",
            "HeadBucket",
        ],
    ),
    (
        "ec2.amazonaws.com",
        &[
            "DescribeInstances",
            "DescribeSecurityGroups",
            "DescribeVolumes",
            "DescribeSubnets",
            "DescribeVpcs",
        ],
    ),
    (
        "iam.amazonaws.com",
        &[
            "GetUser",
            "ListRoles",
            "GetRole",
            "ListAttachedRolePolicies",
            "GetPolicy",
        ],
    ),
    ("sts.amazonaws.com", &["GetCallerIdentity", "AssumeRole"]),
    (
        "lambda.amazonaws.com",
        &["ListFunctions20150331", "GetFunction", "GetFunctionConfiguration"],
    ),
    (
        "dynamodb.amazonaws.com",
        &["DescribeTable", "ListTables", "DescribeContinuousBackups"],
    ),
    (
        "kms.amazonaws.com",
        &["Decrypt", "GenerateDataKey", "DescribeKey"],
    ),
    (
        "monitoring.amazonaws.com",
        &["GetMetricData", "DescribeAlarms", "PutMetricData"],
    ),
    (
        "logs.amazonaws.com",
        &["DescribeLogGroups", "CreateLogStream", "FilterLogEvents"],
    ),
    (
        "ssm.amazonaws.com",
        &["GetParameter", "GetParameters", "DescribeParameters"],
    ),
    (
        "cloudformation.amazonaws.com",
        &["DescribeStacks", "ListStacks", "GetTemplate"],
    ),
    (
        "ecr.amazonaws.com",
        &["GetAuthorizationToken", "BatchGetImage", "DescribeRepositories"],
    ),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    /// Weekdays, office hours, CLI and console.
    Human,
    /// Around the clock, one SDK.
    ServiceRole,
    /// An AWS service acting on the account's behalf.
    AwsService,
}

struct Persona {
    style: Style,
    account: &'static str,
    region: &'static str,
    identity: Value,
    calls: Vec<(&'static str, &'static str, u32)>,
    ips: Vec<String>,
    agents: Vec<String>,
    /// Share of the day's events per active hour is the same; this scales the day.
    volume: f64,
    /// Days on which the principal acts (all by default).
    active: std::ops::Range<u32>,
}

struct Planned {
    time: i64,
    record: Value,
    label: Option<&'static str>,
}

/// Generates a trail under `options.out`.
pub fn generate(options: &GenerateOptions) -> std::io::Result<GenerateReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let personas = build_personas(&mut rng, options);
    let mut planned = Vec::new();
    for persona in &personas {
        plan_habits(&mut rng, options, persona, &mut planned);
    }
    inject_incidents(&mut rng, options, &personas, &mut planned);
    plan_lookalikes(options, &personas, &mut planned);
    write_trail(&mut rng, options, planned)
}

/// Where CloudTrail would deliver a log file of `account` and `region` at `delivered`: its
/// delivery time, folder and name (with a random part, as CloudTrail's own).
fn log_file(
    out: &Path,
    account: &str,
    region: &str,
    delivered: i64,
    rng: &mut ChaCha8Rng,
) -> (chrono::DateTime<chrono::Utc>, PathBuf, String) {
    let stamp = chrono::DateTime::from_timestamp(delivered, 0).unwrap_or_default();
    let dir = out.join(format!(
        "AWSLogs/{account}/CloudTrail/{region}/{}",
        stamp.format("%Y/%m/%d")
    ));
    let unique: String = (0..16)
        .map(|_| {
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..62)],
            )
        })
        .collect();
    let name = format!(
        "{account}_CloudTrail_{region}_{}_{unique}.json.gz",
        stamp.format("%Y%m%dT%H%MZ")
    );
    (stamp, dir, name)
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    let b: [u8; 16] = rng.gen();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

fn key_id(rng: &mut ChaCha8Rng, prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

fn cli_agent(rng: &mut ChaCha8Rng) -> String {
    let minor = rng.gen_range(9..16);
    format!(
        "aws-cli/2.{minor}.{} Python/3.11.6 Linux/6.1.0-18-amd64 exe/x86_64.debian.12 prompt/off",
        rng.gen_range(0..30)
    )
}

fn sdk_agent(rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..3) {
        0 => format!("Boto3/1.34.{} md/Botocore#1.34.{} ua/2.0 os/linux#5.10.210-201.852.amzn2.x86_64 lang/python#3.12.2", rng.gen_range(0..80), rng.gen_range(0..80)),
        1 => format!("aws-sdk-go-v2/1.25.{} os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64", rng.gen_range(0..9)),
        _ => format!("aws-sdk-java/2.25.{} Linux/5.10 OpenJDK_64-Bit_Server_VM/17.0.10+7-LTS Java/17.0.10", rng.gen_range(0..40)),
    }
}

const BROWSER: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36";

fn build_personas(rng: &mut ChaCha8Rng, options: &GenerateOptions) -> Vec<Persona> {
    // Fixed cast first (the incidents' actors), then the crowd.
    let mut personas = Vec::new();
    let n = options.principals.max(8);
    for i in 0..n {
        let account = ACCOUNTS[i as usize % ACCOUNTS.len()];
        let region = REGIONS[(i as usize / 2) % REGIONS.len()];
        let style = match i {
            0 | 1 | 2 | 5 => Style::Human,
            3 | 4 => Style::ServiceRole,
            6 | 7 => Style::AwsService,
            _ if i % 10 < 4 => Style::Human,
            _ if i % 10 < 9 => Style::ServiceRole,
            _ => Style::AwsService,
        };
        let mut services: Vec<&(&str, &[&str])> = CATALOG.iter().collect();
        services.shuffle(rng);
        let mut calls = Vec::new();
        for (service, names) in services.iter().take(rng.gen_range(2..=4)) {
            let mut names: Vec<&str> = names.to_vec();
            names.shuffle(rng);
            for name in names.iter().take(rng.gen_range(1..=3)) {
                calls.push((*service, *name, rng.gen_range(1..20)));
            }
        }
        let office = format!("198.51.{}.{}", 10 + i % 40, rng.gen_range(2..250));
        let (identity, ips, agents) = match style {
            Style::Human => {
                let name = format!("user{i:03}");
                let identity = json!({
                    "type": "IAMUser", "principalId": key_id(rng, "AIDA"),
                    "arn": format!("arn:aws:iam::{account}:user/{name}"), "accountId": account,
                    "accessKeyId": key_id(rng, "AKIA"), "userName": name});
                let vpn = format!("192.0.2.{}", rng.gen_range(2..250));
                (identity, vec![office, vpn], vec![cli_agent(rng)])
            }
            Style::ServiceRole => {
                let role = format!("svc-role-{i:03}");
                let session = format!("svc-{i:03}-session");
                let identity = json!({
                    "type": "AssumedRole", "principalId": format!("{}:{session}", key_id(rng, "AROA")),
                    "arn": format!("arn:aws:sts::{account}:assumed-role/{role}/{session}"), "accountId": account,
                    "accessKeyId": key_id(rng, "ASIA"),
                    "sessionContext": {
                        "sessionIssuer": {"type": "Role", "principalId": key_id(rng, "AROA"),
                            "arn": format!("arn:aws:iam::{account}:role/{role}"), "accountId": account, "userName": role},
                        "attributes": {"creationDate": format_time(options.start), "mfaAuthenticated": "false"}}});
                let nat = format!("203.0.113.{}", rng.gen_range(2..250));
                (identity, vec![nat], vec![sdk_agent(rng)])
            }
            Style::AwsService => {
                let service = [
                    "cloudformation.amazonaws.com",
                    "autoscaling.amazonaws.com",
                    "config.amazonaws.com",
                ][i as usize % 3];
                let identity = json!({"type": "AWSService", "invokedBy": service});
                (identity, vec![service.to_owned()], vec![service.to_owned()])
            }
        };
        let volume = rng.gen_range(0.5..1.5);
        personas.push(Persona {
            style,
            account,
            region,
            identity,
            calls,
            ips,
            agents,
            volume,
            active: 0..options.days,
        });
    }
    // The dormant admin acts on the first day only, then falls silent until the incident.
    personas[5].active = 0..1;
    personas
}

#[allow(clippy::too_many_arguments)] // one argument per record field a habit varies
fn record(
    rng: &mut ChaCha8Rng,
    persona: &Persona,
    time: i64,
    service: &str,
    name: &str,
    ip: &str,
    agent: &str,
    region: &str,
) -> Value {
    let region = if GLOBAL.contains(&service) {
        "us-east-1"
    } else {
        region
    };
    let read_only = name.starts_with("Get")
        || name.starts_with("List")
        || name.starts_with("Describe")
        || name.starts_with("Head");
    let request = match service {
        "s3.amazonaws.com" if name != "ListBuckets" => {
            json!({"bucketName": format!("data-{}", persona.account), "Host": "s3.amazonaws.com"})
        }
        "ssm.amazonaws.com" => json!({"name": "/app/config/db-host", "withDecryption": false}),
        "kms.amazonaws.com" => {
            json!({"encryptionAlgorithm": "SYMMETRIC_DEFAULT", "encryptionContext": {"aws:lambda:FunctionArn": format!("arn:aws:lambda:{region}:{}:function:api", persona.account)}})
        }
        "ec2.amazonaws.com" => json!({"maxResults": 1000, "filterSet": {}}),
        _ => Value::Null,
    };
    json!({
        "eventVersion": "1.09",
        "userIdentity": persona.identity,
        "eventTime": format_time(time),
        "eventSource": service,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": ip,
        "userAgent": agent,
        "requestParameters": request,
        "responseElements": Value::Null,
        "requestID": uuid(rng),
        "eventID": uuid(rng),
        "readOnly": read_only,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": persona.account,
        "eventCategory": "Management",
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                       "clientProvidedHostHeader": format!("{}.{region}.amazonaws.com", service.trim_end_matches(".amazonaws.com"))},
    })
}

fn pick_call(
    rng: &mut ChaCha8Rng,
    calls: &[(&'static str, &'static str, u32)],
) -> (&'static str, &'static str) {
    let total: u32 = calls.iter().map(|c| c.2).sum();
    let mut x = rng.gen_range(0..total);
    for &(service, name, weight) in calls {
        if x < weight {
            return (service, name);
        }
        x -= weight;
    }
    (calls[0].0, calls[0].1)
}

/// Events for each hour the persona works: office hours on weekdays for humans, every hour for
/// the rest. The first active hour uses every habit once.
fn plan_habits(rng: &mut ChaCha8Rng, options: &GenerateOptions, persona: &Persona, out: &mut Vec<Planned>) {
    let per_day = f64::from(options.events_per_day) * persona.volume;
    let mut first = true;
    for day in persona.active.clone() {
        let day_start = options.start + i64::from(day) * DAY;
        let weekend = day % 7 >= 5;
        let hours: Vec<i64> = match persona.style {
            Style::Human if weekend => continue,
            Style::Human => (8..18).collect(),
            _ => (0..24).collect(),
        };
        let per_hour = per_day / hours.len() as f64;
        for hour in hours {
            let hour_start = day_start + hour * HOUR;
            if first {
                first = false;
                for &(service, name, _) in &persona.calls {
                    for ip in &persona.ips {
                        for agent in &persona.agents {
                            let t = hour_start + rng.gen_range(0..600);
                            let r = record(rng, persona, t, service, name, ip, agent, persona.region);
                            out.push(Planned {
                                time: t,
                                record: r,
                                label: None,
                            });
                        }
                    }
                }
            }
            let n = (per_hour * rng.gen_range(0.6..1.4)).round() as u32;
            for _ in 0..n {
                let t = hour_start + rng.gen_range(0..HOUR);
                let (service, name) = pick_call(rng, &persona.calls);
                let ip = persona.ips.choose(rng).expect("a persona has an address").clone();
                let agent = persona
                    .agents
                    .choose(rng)
                    .expect("a persona has an agent")
                    .clone();
                let mut r = record(rng, persona, t, service, name, &ip, &agent, persona.region);
                // A little benign noise: the odd denied call.
                if rng.gen_bool(0.005) {
                    r["errorCode"] = json!("AccessDenied");
                    r["errorMessage"] = json!("User is not authorized to perform this action");
                }
                out.push(Planned {
                    time: t,
                    record: r,
                    label: None,
                });
            }
        }
    }
}

const TERRAFORM_AGENT: &str = "APN/1.0 HashiCorp/1.0 Terraform/1.7.5 (+https://www.terraform.io) \
    terraform-provider-aws/5.40.0 \
    aws-sdk-go-v2/1.25.2 os/linux lang/go#1.22.0 md/GOOS#linux md/GOARCH#amd64";

/// A benign administrative call that resembles an attack technique: its service, name and request.
fn lookalike_call(account: &str, name: &'static str, n: u32) -> (&'static str, &'static str, Value) {
    let trust = |service: &str| {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})
        .to_string()
    };
    let request = match name {
        "CreateRole" => {
            json!({"roleName": format!("app-{n}"), "assumeRolePolicyDocument": trust("lambda.amazonaws.com")})
        }
        "PutRolePolicy" => json!({"roleName": format!("app-{n}"), "policyName": "table-access",
            "policyDocument": json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["dynamodb:GetItem", "dynamodb:PutItem"],
                "Resource": format!("arn:aws:dynamodb:us-east-1:{account}:table/orders")}]}).to_string()}),
        "AttachRolePolicy" => {
            json!({"roleName": format!("app-{n}"), "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"})
        }
        "UpdateFunctionCode20150331v2" => {
            json!({"functionName": "api", "s3Bucket": format!("artifacts-{account}"),
            "s3Key": format!("api/{n}.zip"), "publish": true})
        }
        "UpdateFunctionConfiguration20150331v2" => json!({"functionName": "api",
            "layers": [format!("arn:aws:lambda:us-east-1:{account}:layer:deps:{n}")]}),
        "AddPermission20150331v2" => json!({"functionName": "api", "statementId": format!("apigw-{n}"),
            "action": "lambda:InvokeFunction", "principal": "apigateway.amazonaws.com",
            "sourceArn": format!("arn:aws:execute-api:us-east-1:{account}:a1b2c3/*")}),
        "DeleteLogGroup" => json!({"logGroupName": format!("/aws/lambda/preview-{n}")}),
        "DeleteFlowLogs" => {
            json!({"DeleteFlowLogsRequest": {"FlowLogId": {"content": format!("fl-0{n:016x}"), "tag": 1}}})
        }
        "AuthorizeSecurityGroupIngress" => {
            json!({"groupId": "sg-0a1b2c3d4e5f67890", "ipPermissions": {"items": [
            {"ipProtocol": "tcp", "fromPort": 443, "toPort": 443, "ipRanges": {"items": [{"cidrIp": "10.0.0.0/16"}]}}]}})
        }
        "PutBucketPolicy" => {
            json!({"bucketName": format!("trail-{account}"), "Host": "s3.amazonaws.com", "policy": "",
            "bucketPolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"}, "Action": "s3:PutObject",
                "Resource": format!("arn:aws:s3:::trail-{account}/AWSLogs/{account}/*")}]}})
        }
        "PutBucketLifecycle" => {
            json!({"bucketName": format!("media-{account}"), "Host": "s3.amazonaws.com", "lifecycle": "",
            "LifecycleConfiguration": {"Rule": {"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": "renders/"},
                "Expiration": {"Days": 365}}}})
        }
        "PutBucketVersioning" => {
            json!({"bucketName": format!("media-{account}"), "Host": "s3.amazonaws.com", "versioning": "",
            "VersioningConfiguration": {"Status": "Enabled"}})
        }
        "RunInstances" => {
            json!({"instancesSet": {"items": [{"imageId": "ami-0c7217cdde317cfec", "minCount": 1, "maxCount": 1}]},
            "instanceType": "m6i.large", "monitoring": {"enabled": false}})
        }
        "ModifySnapshotAttribute" => {
            json!({"snapshotId": format!("snap-0{n:016x}"), "attributeType": "CREATE_VOLUME_PERMISSION",
            "createVolumePermission": {"remove": {"items": [{"userId": "999988887777"}]}}})
        }
        "CreateServiceLinkedRole" => json!({"aWSServiceName": "autoscaling.amazonaws.com"}),
        "DeregisterImage" => json!({"imageId": format!("ami-0{n:016x}")}),
        _ => Value::Null,
    };
    let service = match name {
        "CreateRole" | "PutRolePolicy" | "AttachRolePolicy" | "CreateServiceLinkedRole" => {
            "iam.amazonaws.com"
        }
        "UpdateFunctionCode20150331v2"
        | "UpdateFunctionConfiguration20150331v2"
        | "AddPermission20150331v2" => "lambda.amazonaws.com",
        "DeleteLogGroup" => "logs.amazonaws.com",
        "PutBucketPolicy" | "PutBucketLifecycle" | "PutBucketVersioning" => "s3.amazonaws.com",
        _ => "ec2.amazonaws.com",
    };
    (service, name, request)
}

/// Benign work that looks like attack techniques, so that rules are measured against it:
/// CloudFormation deploying and tearing down stacks (roles, policies, function code and layers,
/// flow logs and log groups deleted, bucket policies), Terraform run from CI (roles, lifecycle and
/// versioning, instances, snapshot permissions removed, function code), AWS services acting for the
/// account (service-linked roles, AMIs retired), and people's commands that fail because they were
/// mistyped. Each actor does all of its work on the first weekday, so baselines learn it; it has
/// its own random stream, so the habits and incidents are the same with or without it.
fn plan_lookalikes(options: &GenerateOptions, personas: &[Persona], out: &mut Vec<Planned>) {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x6c6f_6f6b_616c_696b);
    let rng = &mut rng;
    let account = ACCOUNTS[0];
    let role_identity = |rng: &mut ChaCha8Rng, role: &str, session: &str| {
        json!({"type": "AssumedRole", "principalId": format!("{}:{session}", key_id(rng, "AROA")),
            "arn": format!("arn:aws:sts::{account}:assumed-role/{role}/{session}"), "accountId": account,
            "accessKeyId": key_id(rng, "ASIA"),
            "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": key_id(rng, "AROA"),
                "arn": format!("arn:aws:iam::{account}:role/{role}"), "accountId": account, "userName": role},
                "attributes": {"creationDate": format_time(options.start), "mfaAuthenticated": "false"}}})
    };
    let actor = |identity: Value, source: &str, agent: &str| Persona {
        style: Style::ServiceRole,
        account,
        region: REGIONS[0],
        identity,
        calls: Vec::new(),
        ips: vec![source.to_owned()],
        agents: vec![agent.to_owned()],
        volume: 1.0,
        active: 0..options.days,
    };
    let mut stack = role_identity(rng, "cfn-exec-role", "AWSCloudFormation");
    stack["invokedBy"] = json!("cloudformation.amazonaws.com");
    let cfn = "cloudformation.amazonaws.com";
    let actors = [
        (
            actor(stack, cfn, cfn),
            2,
            &[
                "CreateRole",
                "PutRolePolicy",
                "UpdateFunctionCode20150331v2",
                "UpdateFunctionConfiguration20150331v2",
                "AddPermission20150331v2",
                "DeleteLogGroup",
                "DeleteFlowLogs",
                "AuthorizeSecurityGroupIngress",
                "PutBucketPolicy",
            ][..],
        ),
        (
            actor(
                role_identity(rng, "ci-deploy", "terraform"),
                "203.0.113.240",
                TERRAFORM_AGENT,
            ),
            1,
            &[
                "CreateRole",
                "AttachRolePolicy",
                "PutBucketLifecycle",
                "PutBucketVersioning",
                "RunInstances",
                "ModifySnapshotAttribute",
                "UpdateFunctionCode20150331v2",
            ][..],
        ),
        (
            actor(
                json!({"type": "AWSService", "invokedBy": "autoscaling.amazonaws.com"}),
                "autoscaling.amazonaws.com",
                "autoscaling.amazonaws.com",
            ),
            1,
            &["CreateServiceLinkedRole"][..],
        ),
        (
            actor(
                json!({"type": "AWSService", "invokedBy": "dlm.amazonaws.com"}),
                "dlm.amazonaws.com",
                "dlm.amazonaws.com",
            ),
            1,
            &["DeregisterImage"][..],
        ),
    ];
    let mut n = 0u32;
    for day in 0..options.days {
        if day % 7 >= 5 {
            continue;
        }
        let day_start = options.start + i64::from(day) * DAY;
        for (persona, runs, names) in &actors {
            for _ in 0..*runs {
                let mut t = day_start + rng.gen_range(9 * HOUR..17 * HOUR);
                for &name in names.iter() {
                    n += 1;
                    let (service, name, request) = lookalike_call(account, name, n);
                    let (ip, agent) = (&persona.ips[0], &persona.agents[0]);
                    let mut r = record(rng, persona, t, service, name, ip, agent, persona.region);
                    r["requestParameters"] = request;
                    out.push(Planned {
                        time: t,
                        record: r,
                        label: None,
                    });
                    t += rng.gen_range(2..30);
                }
            }
        }
        // Mistyped commands: a person's habitual call that fails on a bad argument.
        for persona in personas.iter().filter(|p| p.style == Style::Human) {
            if !persona.active.contains(&day) || !rng.gen_bool(0.3) {
                continue;
            }
            let t = day_start + rng.gen_range(9 * HOUR..17 * HOUR);
            let (service, name) = pick_call(rng, &persona.calls);
            let ip = persona.ips[0].clone();
            let agent = persona.agents[0].clone();
            let mut r = record(rng, persona, t, service, name, &ip, &agent, persona.region);
            let (code, message) = [
                ("ValidationException", "1 validation error detected"),
                (
                    "InvalidParameterValue",
                    "Value (i-0abc) for parameter instanceId is invalid",
                ),
                ("NoSuchEntity", "The specified entity cannot be found"),
                ("ResourceNotFoundException", "Requested resource not found"),
            ][rng.gen_range(0..4)];
            r["errorCode"] = json!(code);
            r["errorMessage"] = json!(message);
            out.push(Planned {
                time: t,
                record: r,
                label: None,
            });
        }
    }
}

fn inject_incidents(
    rng: &mut ChaCha8Rng,
    options: &GenerateOptions,
    personas: &[Persona],
    out: &mut Vec<Planned>,
) {
    let days = i64::from(options.days.max(10));
    // Incidents fall on a weekday after learning, each at its own hour.
    let incident_day = |offset: i64| {
        let mut day = days / 2 + offset;
        while day % 7 >= 5 {
            day += 1;
        }
        options.start + day.min(days - 1) * DAY
    };
    let push = |out: &mut Vec<Planned>,
                rng: &mut ChaCha8Rng,
                persona: &Persona,
                t: i64,
                service: &str,
                name: &str,
                ip: &str,
                agent: &str,
                region: &str,
                label: &'static str,
                edit: &dyn Fn(&mut Value)| {
        let mut r = record(rng, persona, t, service, name, ip, agent, region);
        edit(&mut r);
        out.push(Planned {
            time: t,
            record: r,
            label: Some(label),
        });
    };
    let none = |_: &mut Value| {};
    let kali = "Boto3/1.34.51 md/Botocore#1.34.51 ua/2.0 os/linux#6.6.9-kali1-amd64 md/arch#x86_64 lang/python#3.11.8";

    // Stolen credentials: a human's key used from abroad, with calls the human never makes.
    let t0 = incident_day(0) + 2 * HOUR;
    let victim = &personas[0];
    for (i, (service, name)) in [
        ("sts.amazonaws.com", "GetCallerIdentity"),
        ("iam.amazonaws.com", "ListUsers"),
        ("iam.amazonaws.com", "ListAccessKeys"),
        ("s3.amazonaws.com", "ListBuckets"),
        ("ec2.amazonaws.com", "DescribeRegions"),
        ("secretsmanager.amazonaws.com", "ListSecrets"),
        ("iam.amazonaws.com", "CreateAccessKey"),
    ]
    .into_iter()
    .enumerate()
    {
        push(
            out,
            rng,
            victim,
            t0 + i as i64 * 40,
            service,
            name,
            "185.220.101.47",
            kali,
            "sa-east-1",
            "stolen_credentials",
            &none,
        );
    }

    // Recon: a service role's credentials probe many services and are mostly refused.
    let t1 = incident_day(1) + 3 * HOUR;
    let prober = &personas[3];
    let probes = [
        ("iam.amazonaws.com", "ListUsers"),
        ("iam.amazonaws.com", "ListPolicies"),
        ("s3.amazonaws.com", "ListBuckets"),
        ("ec2.amazonaws.com", "DescribeInstances"),
        ("rds.amazonaws.com", "DescribeDBInstances"),
        ("secretsmanager.amazonaws.com", "ListSecrets"),
        ("organizations.amazonaws.com", "DescribeOrganization"),
        ("guardduty.amazonaws.com", "ListDetectors"),
        ("lambda.amazonaws.com", "ListFunctions20150331"),
        ("cloudtrail.amazonaws.com", "DescribeTrails"),
    ];
    let prober_ip = prober.ips[0].clone();
    let prober_agent = prober.agents[0].clone();
    for i in 0..60 {
        let (service, name) = probes[i % probes.len()];
        push(
            out,
            rng,
            prober,
            t1 + i as i64 * 5,
            service,
            name,
            &prober_ip,
            &prober_agent,
            prober.region,
            "recon_access_denied",
            &|r: &mut Value| {
                r["errorCode"] = json!("AccessDenied");
                r["errorMessage"] = json!("User is not authorized to perform this operation");
            },
        );
    }

    // The dormant admin wakes up and grants itself more.
    let t2 = incident_day(3) + 22 * HOUR;
    let admin = &personas[5];
    let admin_ip = admin.ips[0].clone();
    let admin_agent = admin.agents[0].clone();
    for (i, (service, name)) in [
        ("iam.amazonaws.com", "GetUser"),
        ("iam.amazonaws.com", "ListRoles"),
        ("iam.amazonaws.com", "AttachUserPolicy"),
    ]
    .into_iter()
    .enumerate()
    {
        push(
            out,
            rng,
            admin,
            t2 + i as i64 * 60,
            service,
            name,
            &admin_ip,
            &admin_agent,
            admin.region,
            "dormant_admin",
            &none,
        );
    }

    // CloudTrail tampering by a service role.
    let t3 = incident_day(2) + 4 * HOUR;
    let tamperer = &personas[4];
    let (ip, agent) = (tamperer.ips[0].clone(), tamperer.agents[0].clone());
    for (i, name) in ["PutEventSelectors", "UpdateTrail", "StopLogging", "DeleteTrail"]
        .into_iter()
        .enumerate()
    {
        push(
            out,
            rng,
            tamperer,
            t3 + i as i64 * 30,
            "cloudtrail.amazonaws.com",
            name,
            &ip,
            &agent,
            tamperer.region,
            "cloudtrail_tampering",
            &|r: &mut Value| {
                r["requestParameters"] = json!({"name": format!("arn:aws:cloudtrail:us-east-1:{}:trail/org-trail", r["recipientAccountId"].as_str().unwrap_or_default())});
                r["readOnly"] = json!(false);
            },
        );
    }

    // Console login without MFA by a user who only ever used the CLI.
    let t4 = incident_day(2) + 9 * HOUR;
    let cli_user = &personas[1];
    push(
        out,
        rng,
        cli_user,
        t4,
        "signin.amazonaws.com",
        "ConsoleLogin",
        "45.137.21.9",
        BROWSER,
        "us-east-1",
        "console_login_no_mfa",
        &|r: &mut Value| {
            r["eventType"] = json!("AwsConsoleSignIn");
            r["requestParameters"] = Value::Null;
            r["responseElements"] = json!({"ConsoleLogin": "Success"});
            r["additionalEventData"] = json!({"LoginTo": "https://console.aws.amazon.com/console/home", "MobileVersion": "No", "MFAUsed": "No"});
            r["readOnly"] = json!(false);
        },
    );

    // Root: used at account set-up, then silent, then used again.
    let root_account = ACCOUNTS[0];
    let root = Persona {
        style: Style::Human,
        account: root_account,
        region: "us-east-1",
        identity: json!({"type": "Root", "principalId": root_account, "arn": format!("arn:aws:iam::{root_account}:root"), "accountId": root_account}),
        calls: vec![
            ("iam.amazonaws.com", "GetAccountSummary", 1),
            ("billing.amazonaws.com", "GetBillingData", 1),
        ],
        ips: vec!["198.51.100.200".into()],
        agents: vec![BROWSER.into()],
        volume: 1.0,
        active: 0..0,
    };
    for i in 0..24 {
        let t = options.start + 10 * HOUR + i * 120;
        let (service, name, _) = root.calls[i as usize % 2];
        let r = record(
            rng,
            &root,
            t,
            service,
            name,
            "198.51.100.200",
            BROWSER,
            "us-east-1",
        );
        out.push(Planned {
            time: t,
            record: r,
            label: None,
        });
    }
    let t5 = incident_day(3) + HOUR;
    push(
        out,
        rng,
        &root,
        t5,
        "signin.amazonaws.com",
        "ConsoleLogin",
        "198.51.100.200",
        BROWSER,
        "us-east-1",
        "root_usage",
        &|r: &mut Value| {
            r["eventType"] = json!("AwsConsoleSignIn");
            r["requestParameters"] = Value::Null;
            r["responseElements"] = json!({"ConsoleLogin": "Success"});
            r["additionalEventData"] = json!({"LoginTo": "https://console.aws.amazon.com/console/home", "MobileVersion": "No", "MFAUsed": "Yes"});
        },
    );
    push(
        out,
        rng,
        &root,
        t5 + 60,
        "iam.amazonaws.com",
        "CreateAccessKey",
        "198.51.100.200",
        BROWSER,
        "us-east-1",
        "root_usage",
        &none,
    );

    // An API-rate spike: a busy role suddenly pulls far more than it ever has.
    let t6 = incident_day(3) + 14 * HOUR;
    let bulk = personas
        .iter()
        .skip(8)
        .find(|p| p.style == Style::ServiceRole)
        .unwrap_or(&personas[3]);
    let (service, name, _) = bulk.calls[0];
    let (ip, agent) = (bulk.ips[0].clone(), bulk.agents[0].clone());
    let burst = (options.events_per_day * 25).max(3000);
    for i in 0..burst {
        let t = t6 + i64::from(i) * HOUR / i64::from(burst) / 2;
        push(
            out,
            rng,
            bulk,
            t,
            service,
            name,
            &ip,
            &agent,
            bulk.region,
            "api_rate_spike",
            &none,
        );
    }
}

/// Sorts events into five-minute files per account and region, delays a few records by a file,
/// repeats a few, and writes files, digests and labels.
fn write_trail(
    rng: &mut ChaCha8Rng,
    options: &GenerateOptions,
    mut planned: Vec<Planned>,
) -> std::io::Result<GenerateReport> {
    planned.sort_by_key(|p| p.time);
    let slot = 5 * 60;
    let mut files: BTreeMap<(i64, String, String), Vec<usize>> = BTreeMap::new();
    for (i, p) in planned.iter().enumerate() {
        let account = p.record["recipientAccountId"]
            .as_str()
            .unwrap_or("000000000000")
            .to_owned();
        let region = p.record["awsRegion"].as_str().unwrap_or("us-east-1").to_owned();
        let mut s = p.time.div_euclid(slot);
        if rng.gen_bool(0.02) {
            s += 1; // delivered a file late
        }
        files
            .entry((s, account.clone(), region.clone()))
            .or_default()
            .push(i);
        if p.label.is_none() && rng.gen_bool(0.001) {
            // CloudTrail occasionally delivers a record twice.
            files.entry((s + 2, account, region)).or_default().push(i);
        }
    }

    let mut report = GenerateReport::default();
    let mut labels = String::new();
    for p in &planned {
        if let Some(label) = p.label {
            let id = p.record["eventID"].as_str().unwrap_or_default();
            labels += &format!("{{\"event_id\":\"{id}\",\"incident\":\"{label}\"}}\n");
            report.labeled += 1;
            *report.incidents.entry(label).or_default() += 1;
        }
    }
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("labels.jsonl"), labels)?;

    let mut digests = std::collections::BTreeSet::new();
    for ((s, account, region), indices) in files {
        let delivered = (s + 1) * slot + rng.gen_range(0..180);
        let (stamp, dir, name) = log_file(&options.out, &account, &region, delivered, rng);
        let records: Vec<&Value> = indices.iter().map(|&i| &planned[i].record).collect();
        write_gz(&dir, &name, &json!({ "Records": records }))?;
        report.files += 1;
        report.records += records.len();
        digests.insert((
            stamp.format("%Y/%m/%d").to_string(),
            stamp.format("%Y%m%dT000000Z").to_string(),
            account,
            region,
        ));
    }
    for (date, stamp, account, region) in digests {
        let dir = options
            .out
            .join(format!("AWSLogs/{account}/CloudTrail-Digest/{region}/{date}"));
        let name = format!("{account}_CloudTrail-Digest_{region}_org-trail_{region}_{stamp}.json.gz");
        let digest = json!({"awsAccountId": account, "digestStartTime": stamp, "digestEndTime": stamp,
            "digestS3Bucket": "trail-bucket", "digestSignatureAlgorithm": "SHA256withRSA", "logFiles": []});
        write_gz(&dir, &name, &digest)?;
    }
    Ok(report)
}

fn write_gz(dir: &Path, name: &str, value: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::create(dir.join(name))?;
    let mut gz =
        flate2::GzBuilder::new().write(std::io::BufWriter::new(file), flate2::Compression::default());
    serde_json::to_writer(&mut gz, value)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_v4_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let id = uuid(&mut rng);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn calls_are_picked_by_weight() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let calls = [("a", "x", 1), ("b", "y", 0)];
        for _ in 0..100 {
            assert_eq!(pick_call(&mut rng, &calls), ("a", "x"));
        }
    }
}
