//! A trail shaped like production CloudTrail, for benchmarks: many API shapes, nested request and
//! response structures, long-tailed record sizes, thousands of principals, and a chosen share of
//! records that the shipped rules match.
//!
//! In: [`RealisticOptions`]. Out: gzip log files in CloudTrail's S3 key layout under the output
//! folder, a digest file per account, region and day, and an empty `labels.jsonl` (this trail
//! injects no labelled incidents; its rule matches are counted in the report instead).
//!
//! What makes it look like production, where a parser or a detector feels it:
//! - **API shapes** come from one table (`SERVICES`): over 40 services and 200 calls, each
//!   service with the request and response structure AWS documents for it (EC2's `items` lists,
//!   IAM's policy documents as escaped JSON strings and URL-encoded in responses, STS credentials,
//!   S3 data events with `additionalEventData` and `resources`, KMS encryption contexts).
//! - **Identities**: IAM users, service roles (some reached through a VPC endpoint), Identity
//!   Center roles carrying `sourceIdentity`, web-identity roles with `webIdFederationData`, EC2
//!   instance roles (`ec2RoleDelivery`) and AWS services (`invokedBy`). Temporary credentials
//!   last a session (an hour for roles, six for instance profiles, a working day for people), and
//!   each session has its own access key and `creationDate` (web-identity sessions also their
//!   own `botocore-session-<epoch>` name), so an identity's text changes from session to session.
//! - **Agents**: the AWS CLI's name the command it runs, so they change from call to call.
//! - **Sizes**: most records are about a kilobyte; lists in requests and responses have a
//!   long-tailed length, so a few records pass 50 KB.
//! - **Key order**: most files keep CloudTrail's own order; about a quarter are re-serialised with
//!   keys sorted at every level, as tools that re-write trails (Athena exports, `jq -S`) leave them.
//! - **Volume**: principals' daily volume follows a heavy-tailed law; people work weekdays in
//!   office hours, roles and services around the clock; a few calls fail with an error code.
//! - **Rule matches**: `rule_share` of the records are calls a shipped single-event rule flags
//!   (`MATCHING`); with zero, no shipped rule matches at all (the benign table avoids every call
//!   the rules watch), and a large share is an alert storm.
//!
//! The same options give the same bytes: every record is built from a seed derived from the run's
//! seed and its position, so files are written on several threads without changing a byte.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{key_id, log_file, uuid, GenerateReport};
use crate::event::format_time;

/// What to generate.
#[derive(Debug, Clone)]
pub struct RealisticOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub days: u32,
    pub principals: u32,
    /// Mean events per principal per day, over all principals and days.
    pub events_per_day: f64,
    /// Unix seconds of the first day's midnight (UTC).
    pub start: i64,
    /// Share of records (0 to 1) that a shipped single-event rule matches.
    pub rule_share: f64,
    /// Event time one log file covers per account and region: CloudTrail's five minutes by
    /// default. Benchmarks take longer spans, so that a file holds as many records as a busy
    /// organisation's five minutes would and opening files does not hide the work on records.
    pub file_span: i64,
}

impl Default for RealisticOptions {
    fn default() -> Self {
        RealisticOptions {
            out: PathBuf::from("trail"),
            seed: 1,
            days: 30,
            principals: 5_000,
            events_per_day: 7.0,
            // 2026-03-02T00:00:00Z, a Monday.
            start: 1_772_409_600,
            rule_share: 0.001,
            file_span: 300,
        }
    }
}

const DAY: i64 = 86_400;
const ACCOUNTS: [&str; 2] = ["111122223333", "444455556666"];
const REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2"];

/// How a service's requests and responses are shaped; the call's verb refines it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Only names and ids of the service's resources.
    Plain,
    /// EC2's query protocol: `items` lists in requests and, for changes, in responses.
    Ec2,
    /// IAM: policy documents as escaped JSON strings, URL-encoded in responses.
    Iam,
    /// STS: credentials and the assumed role in responses.
    Sts,
    /// S3 bucket calls: `bucketName`, `Host`, `additionalEventData`.
    S3Bucket,
    /// S3 object calls (data events): keys, `resources`, bytes transferred.
    S3Object,
    /// KMS: encryption contexts, key ARNs in `resources`.
    Kms,
    /// Data events on tables, functions and queues.
    DataPlane,
    /// Calls that take tags and long configuration documents.
    Config,
}

/// Services and their calls, none of which a shipped rule matches.
const SERVICES: &[(&str, Shape, &[&str])] = &[
    (
        "s3.amazonaws.com",
        Shape::S3Bucket,
        &[
            "GetBucketLocation",
            "GetBucketAcl",
            "GetBucketVersioning",
            "GetBucketTagging",
            "GetBucketEncryption",
            "GetBucketLogging",
            "GetBucketPublicAccessBlock",
            "ListObjects",
            "ListObjectsV2",
            "HeadBucket",
            "GetBucketOwnershipControls",
            "PutBucketTagging",
        ],
    ),
    (
        "s3.amazonaws.com",
        Shape::S3Object,
        &[
            "GetObject",
            "PutObject",
            "HeadObject",
            "CopyObject",
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
            "GetObjectTagging",
        ],
    ),
    (
        "ec2.amazonaws.com",
        Shape::Ec2,
        &[
            "DescribeVolumes",
            "DescribeSubnets",
            "DescribeNetworkInterfaces",
            "DescribeRouteTables",
            "DescribeAvailabilityZones",
            "DescribeTags",
            "DescribeLaunchTemplates",
            "DescribeAddresses",
            "DescribeInstanceStatus",
            "CreateTags",
            "DeleteTags",
            "StartInstances",
            "StopInstances",
            "RunInstances",
            "TerminateInstances",
            "CreateNetworkInterface",
            "AttachVolume",
            "CreateVolume",
            "AuthorizeSecurityGroupEgress",
        ],
    ),
    (
        "iam.amazonaws.com",
        Shape::Iam,
        &[
            "GetRole",
            "GetRolePolicy",
            "ListRolePolicies",
            "ListAttachedRolePolicies",
            "GetPolicyVersion",
            "GetInstanceProfile",
            "ListInstanceProfilesForRole",
            "PutRolePolicy",
            "CreateRole",
            "TagRole",
            "CreatePolicy",
            "GetServiceLastAccessedDetails",
        ],
    ),
    (
        "sts.amazonaws.com",
        Shape::Sts,
        &[
            "AssumeRole",
            "AssumeRoleWithWebIdentity",
            "GetSessionToken",
            "DecodeAuthorizationMessage",
        ],
    ),
    (
        "kms.amazonaws.com",
        Shape::Kms,
        &[
            "Decrypt",
            "Encrypt",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "DescribeKey",
            "ReEncrypt",
            "GetKeyRotationStatus",
            "ListAliases",
        ],
    ),
    (
        "lambda.amazonaws.com",
        Shape::Config,
        &[
            "GetFunction",
            "GetFunctionConfiguration",
            "ListVersionsByFunction",
            "GetPolicy20150331v2",
            "UpdateFunctionConfiguration20150331v2",
            "ListEventSourceMappings",
            "GetFunctionUrlConfig",
        ],
    ),
    ("lambda.amazonaws.com", Shape::DataPlane, &["Invoke"]),
    (
        "dynamodb.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeTable",
            "ListTables",
            "DescribeContinuousBackups",
            "DescribeTimeToLive",
            "ListTagsOfResource",
            "UpdateTable",
        ],
    ),
    (
        "dynamodb.amazonaws.com",
        Shape::DataPlane,
        &["GetItem", "PutItem", "Query", "UpdateItem", "BatchWriteItem"],
    ),
    (
        "monitoring.amazonaws.com",
        Shape::Config,
        &[
            "GetMetricData",
            "DescribeAlarms",
            "PutMetricAlarm",
            "ListMetrics",
            "GetMetricStatistics",
            "DescribeAlarmHistory",
        ],
    ),
    (
        "logs.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeLogGroups",
            "DescribeLogStreams",
            "CreateLogStream",
            "FilterLogEvents",
            "GetLogEvents",
            "StartQuery",
            "GetQueryResults",
            "PutRetentionPolicy",
        ],
    ),
    (
        "ssm.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeInstanceInformation",
            "ListCommands",
            "GetDocument",
            "UpdateInstanceInformation",
            "ListAssociations",
            "DescribeAssociation",
            "GetInventory",
        ],
    ),
    (
        "cloudformation.amazonaws.com",
        Shape::Config,
        &[
            "DescribeStacks",
            "DescribeStackEvents",
            "ListStackResources",
            "DescribeStackResources",
            "CreateChangeSet",
            "DescribeChangeSet",
            "ExecuteChangeSet",
            "GetTemplateSummary",
        ],
    ),
    (
        "ecr.amazonaws.com",
        Shape::Plain,
        &[
            "GetAuthorizationToken",
            "BatchGetImage",
            "GetDownloadUrlForLayer",
            "BatchCheckLayerAvailability",
            "DescribeImages",
            "PutImage",
            "InitiateLayerUpload",
        ],
    ),
    (
        "ecs.amazonaws.com",
        Shape::Config,
        &[
            "DescribeServices",
            "DescribeTasks",
            "ListTasks",
            "DescribeTaskDefinition",
            "RegisterTaskDefinition",
            "UpdateService",
            "SubmitTaskStateChange",
        ],
    ),
    (
        "eks.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeCluster",
            "ListNodegroups",
            "DescribeNodegroup",
            "ListAddons",
            "DescribeAddon",
        ],
    ),
    (
        "rds.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeDBClusters",
            "DescribeDBSnapshots",
            "DescribeEvents",
            "DescribeDBParameterGroups",
            "DescribePendingMaintenanceActions",
            "CreateDBSnapshot",
        ],
    ),
    (
        "sns.amazonaws.com",
        Shape::Plain,
        &[
            "ListTopics",
            "GetTopicAttributes",
            "ListSubscriptionsByTopic",
            "Subscribe",
            "SetTopicAttributes",
        ],
    ),
    (
        "sqs.amazonaws.com",
        Shape::Plain,
        &[
            "GetQueueAttributes",
            "ListQueues",
            "GetQueueUrl",
            "SetQueueAttributes",
            "ListQueueTags",
        ],
    ),
    (
        "secretsmanager.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeSecret",
            "GetResourcePolicy",
            "RotateSecret",
            "PutSecretValue",
            "UpdateSecret",
        ],
    ),
    (
        "elasticloadbalancing.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeTargetHealth",
            "DescribeLoadBalancers",
            "DescribeTargetGroups",
            "RegisterTargets",
            "DeregisterTargets",
            "DescribeListeners",
        ],
    ),
    (
        "autoscaling.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeAutoScalingGroups",
            "DescribeScalingActivities",
            "SetDesiredCapacity",
            "DescribeLaunchConfigurations",
            "CompleteLifecycleAction",
        ],
    ),
    (
        "route53.amazonaws.com",
        Shape::Config,
        &[
            "ListHostedZones",
            "ListResourceRecordSets",
            "ChangeResourceRecordSets",
            "GetChange",
            "GetHostedZone",
        ],
    ),
    (
        "cloudfront.amazonaws.com",
        Shape::Config,
        &[
            "GetDistribution",
            "ListDistributions",
            "CreateInvalidation",
            "GetDistributionConfig",
        ],
    ),
    (
        "apigateway.amazonaws.com",
        Shape::Plain,
        &["GetRestApis", "GetStages", "GetResources", "CreateDeployment"],
    ),
    (
        "events.amazonaws.com",
        Shape::Config,
        &["PutEvents", "ListRules", "DescribeRule", "PutRule", "PutTargets"],
    ),
    (
        "states.amazonaws.com",
        Shape::Config,
        &[
            "StartExecution",
            "DescribeExecution",
            "ListExecutions",
            "DescribeStateMachine",
        ],
    ),
    (
        "glue.amazonaws.com",
        Shape::Config,
        &[
            "GetTable",
            "GetTables",
            "GetDatabase",
            "GetPartitions",
            "BatchCreatePartition",
            "StartJobRun",
        ],
    ),
    (
        "athena.amazonaws.com",
        Shape::Config,
        &[
            "StartQueryExecution",
            "GetQueryExecution",
            "GetQueryResults",
            "GetWorkGroup",
        ],
    ),
    (
        "kinesis.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeStream",
            "ListShards",
            "DescribeStreamSummary",
            "ListStreams",
        ],
    ),
    (
        "firehose.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeDeliveryStream",
            "ListDeliveryStreams",
            "UpdateDestination",
        ],
    ),
    (
        "elasticache.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeCacheClusters",
            "DescribeReplicationGroups",
            "DescribeEvents",
        ],
    ),
    (
        "redshift.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeClusters",
            "DescribeLoggingStatus",
            "GetClusterCredentials",
        ],
    ),
    (
        "config.amazonaws.com",
        Shape::Config,
        &[
            "DescribeConfigRules",
            "PutEvaluations",
            "DescribeComplianceByConfigRule",
            "GetResourceConfigHistory",
        ],
    ),
    (
        "securityhub.amazonaws.com",
        Shape::Plain,
        &[
            "GetFindings",
            "BatchImportFindings",
            "DescribeHub",
            "GetEnabledStandards",
        ],
    ),
    (
        "organizations.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeOrganization",
            "ListAccounts",
            "ListParents",
            "DescribeAccount",
        ],
    ),
    (
        "acm.amazonaws.com",
        Shape::Plain,
        &["DescribeCertificate", "ListCertificates", "GetCertificate"],
    ),
    (
        "codebuild.amazonaws.com",
        Shape::Config,
        &["StartBuild", "BatchGetBuilds", "BatchGetProjects"],
    ),
    (
        "codepipeline.amazonaws.com",
        Shape::Config,
        &[
            "GetPipeline",
            "GetPipelineState",
            "PutJobSuccessResult",
            "StartPipelineExecution",
        ],
    ),
    (
        "sagemaker.amazonaws.com",
        Shape::Plain,
        &["DescribeEndpoint", "ListModels", "DescribeTrainingJob"],
    ),
    (
        "backup.amazonaws.com",
        Shape::Plain,
        &["ListBackupJobs", "DescribeBackupVault", "StartBackupJob"],
    ),
    (
        "elasticfilesystem.amazonaws.com",
        Shape::Plain,
        &[
            "DescribeFileSystems",
            "DescribeMountTargets",
            "DescribeAccessPoints",
        ],
    ),
    (
        "cognito-idp.amazonaws.com",
        Shape::Plain,
        &["DescribeUserPool", "ListUserPoolClients", "AdminGetUser"],
    ),
    (
        "tagging.amazonaws.com",
        Shape::Plain,
        &["GetResources", "GetTagKeys", "TagResources"],
    ),
    (
        "health.amazonaws.com",
        Shape::Plain,
        &["DescribeEvents", "DescribeEventAggregates"],
    ),
    (
        "ce.amazonaws.com",
        Shape::Plain,
        &["GetCostAndUsage", "GetCostForecast"],
    ),
    (
        "wafv2.amazonaws.com",
        Shape::Config,
        &["GetWebACL", "ListWebACLs", "UpdateWebACL"],
    ),
    (
        "servicecatalog.amazonaws.com",
        Shape::Plain,
        &["SearchProducts", "DescribeProduct"],
    ),
    ("signin.amazonaws.com", Shape::Plain, &["ConsoleLogin"]),
];

/// Calls a shipped single-event rule flags, each as the rule's test events show it: the alert
/// storm's records.
const MATCHING: &[(&str, &str)] = &[
    ("ec2.amazonaws.com", "GetPasswordData"),
    ("cloudtrail.amazonaws.com", "StopLogging"),
    ("guardduty.amazonaws.com", "DeleteDetector"),
    ("monitoring.amazonaws.com", "DeleteAlarms"),
    ("config.amazonaws.com", "StopConfigurationRecorder"),
    ("ec2.amazonaws.com", "DisableEbsEncryptionByDefault"),
    ("kms.amazonaws.com", "ScheduleKeyDeletion"),
    ("iam.amazonaws.com", "AttachRolePolicy"),
    ("ec2-instance-connect.amazonaws.com", "SendSSHPublicKey"),
    ("ssm.amazonaws.com", "StartSession"),
    ("cloudtrail.amazonaws.com", "UpdateTrail"),
    ("sts.amazonaws.com", "GetFederationToken"),
];

/// An ordered JSON value: records keep the key order they are built in (CloudTrail's), or are
/// written with keys sorted.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'static, str>),
    Arr(Vec<J>),
    Obj(Vec<(Cow<'static, str>, J)>),
}

fn s(v: impl Into<Cow<'static, str>>) -> J {
    J::Str(v.into())
}

macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => { J::Obj(vec![$((Cow::from($k), $v)),*]) };
}

impl J {
    fn push(&mut self, key: impl Into<Cow<'static, str>>, value: J) {
        if let J::Obj(entries) = self {
            entries.push((key.into(), value));
        }
    }

    /// Writes compact JSON, keys in order or sorted at every level.
    fn write(&self, sorted: bool, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => out.push_str(&i.to_string()),
            J::Str(text) => write_str(text, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(sorted, out);
                }
                out.push(']');
            }
            J::Obj(entries) => {
                let mut order: Vec<&(Cow<str>, J)> = entries.iter().collect();
                if sorted {
                    order.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (key, value)) in order.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(key, out);
                    out.push(':');
                    value.write(sorted, out);
                }
                out.push('}');
            }
        }
    }

    /// The value as a JSON text: a policy document inside a request.
    fn text(&self, pretty: bool) -> String {
        let mut out = String::new();
        self.write(false, &mut out);
        if pretty {
            // The layout the console and most SDK users submit: a newline and indent per key.
            out = out.replace("{\"", "{\n  \"").replace(",\"", ",\n  \"");
        }
        out
    }
}

fn write_str(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `%XX` encoding of everything but unreserved characters, as IAM returns policy documents.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    User,
    ServiceRole,
    IdentityCenter,
    WebIdentity,
    Instance,
    AwsService,
}

struct Principal {
    kind: Kind,
    account: &'static str,
    regions: Vec<&'static str>,
    identity: J,
    /// How long its temporary credentials last, in seconds, for identities that have them: each
    /// record carries its session's own access key and creation time (see `session_identity`).
    session: Option<i64>,
    /// Draws each session's access key, and shifts session starts off the hour.
    credential_seed: u64,
    /// Indices into the flattened call table, with weights.
    calls: Vec<(usize, u32)>,
    ips: Vec<String>,
    agents: Vec<String>,
    vpc_endpoint: Option<String>,
    events: u32,
}

/// One planned record: when, who, and the seed its body is built from.
#[derive(Clone, Copy)]
struct Planned {
    time: i64,
    principal: u32,
    /// Index of the record among the principal's, which picks habits in turn at first.
    nth: u32,
    seed: u64,
}

fn calls() -> Vec<(&'static str, Shape, &'static str)> {
    SERVICES
        .iter()
        .flat_map(|&(source, shape, names)| names.iter().map(move |&name| (source, shape, name)))
        .collect()
}

/// Calls the shipped discovery rules watch when instance credentials make them, which an
/// instance role therefore never has among its habits.
const DISCOVERY: &[&str] = &["DescribeImages", "GetBucketPolicy", "ListKeys", "ListAccounts"];

fn hex(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

fn base64ish(rng: &mut ChaCha8Rng, n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..64)]))
        .collect()
}

/// A list length with a long tail: mostly one to three, now and then hundreds.
fn tail_len(rng: &mut ChaCha8Rng) -> usize {
    if rng.gen_bool(0.9) {
        rng.gen_range(1..=3)
    } else {
        let u: f64 = rng.gen_range(0.002..1.0);
        (3.0 / u.powf(1.1)).min(150.0) as usize
    }
}

fn agent(rng: &mut ChaCha8Rng, kind: Kind) -> String {
    match (kind, rng.gen_range(0..5)) {
        (Kind::User | Kind::IdentityCenter, 0..=1) => "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36".into(),
        (Kind::User | Kind::IdentityCenter, _) => format!(
            "aws-cli/2.{}.{} md/awscrt#0.22.0 ua/2.0 os/macos#24.1.0 md/arch#arm64 lang/python#3.12.6 md/pyimpl#CPython cfg/retry-mode#standard md/installer#source md/prompt#off md/command#{}",
            rng.gen_range(15..23), rng.gen_range(0..40), ["s3.ls", "ec2.describe-instances", "sts.get-caller-identity", "logs.tail"][rng.gen_range(0..4)]
        ),
        (_, 0) => format!("Boto3/1.35.{} md/Botocore#1.35.{} ua/2.0 os/linux#5.10.228-219.884.amzn2.x86_64 md/arch#x86_64 lang/python#3.12.7 md/pyimpl#CPython exec-env/AWS_ECS_FARGATE cfg/retry-mode#legacy Botocore/1.35.{}", rng.gen_range(0..90), rng.gen_range(0..90), rng.gen_range(0..90)),
        (_, 1) => format!("aws-sdk-go-v2/1.32.{} ua/2.1 os/linux lang/go#1.23.4 md/GOOS#linux md/GOARCH#amd64 api/sts#1.33.{} m/E", rng.gen_range(0..9), rng.gen_range(0..9)),
        (_, 2) => format!("aws-sdk-java/2.29.{} md/io#sync md/http#Apache ua/2.1 os/Linux#5.10.228-219.884.amzn2.x86_64 lang/java#17.0.13 md/OpenJDK_64-Bit_Server_VM#17.0.13+11-LTS md/vendor#Amazon.com_Inc. md/en_US m/D,N", rng.gen_range(0..40)),
        (_, 3) => format!("aws-sdk-js/3.716.0 ua/2.1 os/linux#5.10.228-219.884.amzn2.x86_64 lang/js md/nodejs#20.18.{} api/dynamodb#3.716.0 m/E,F", rng.gen_range(0..3)),
        _ => format!("APN/1.0 HashiCorp/1.0 Terraform/1.9.{} (+https://www.terraform.io) terraform-provider-aws/5.82.{} aws-sdk-go-v2/1.32.6 ua/2.1 os/linux lang/go#1.23.3 md/GOOS#linux md/GOARCH#amd64", rng.gen_range(0..8), rng.gen_range(0..3)),
    }
}

fn build_principals(
    rng: &mut ChaCha8Rng,
    options: &RealisticOptions,
    table: &[(&'static str, Shape, &'static str)],
) -> Vec<Principal> {
    let n = options.principals.max(1) as usize;
    // Heavy-tailed volume: a Pareto weight per principal, scaled to the trail's total.
    let weights: Vec<f64> = (0..n)
        .map(|_| 1.0 / rng.gen_range(0.01f64..1.0).powf(0.85))
        .collect();
    let sum: f64 = weights.iter().sum();
    let total = f64::from(options.principals) * f64::from(options.days) * options.events_per_day;
    let mut principals = Vec::with_capacity(n);
    for (i, weight) in weights.into_iter().enumerate() {
        let account = ACCOUNTS[i % ACCOUNTS.len()];
        let kind = match rng.gen_range(0..100) {
            0..=14 => Kind::User,
            15..=54 => Kind::ServiceRole,
            55..=69 => Kind::IdentityCenter,
            70..=79 => Kind::WebIdentity,
            80..=91 => Kind::Instance,
            _ => Kind::AwsService,
        };
        // Most work in one region, as most organisations'.
        let home = REGIONS[[0, 0, 0, 0, 0, 1, 1, 2, 3][rng.gen_range(0..9)]];
        let mut regions = vec![home];
        if rng.gen_bool(0.2) {
            regions.push(REGIONS[rng.gen_range(0..REGIONS.len())]);
        }
        let created = format_time(options.start - rng.gen_range(0..DAY * 400));
        let role_id = key_id(rng, "AROA");
        let identity = match kind {
            Kind::User => {
                let name = format!(
                    "{}.{}",
                    ["ana", "bo", "chen", "dara", "eli", "femi", "gus", "hana"][i % 8],
                    i
                );
                let mut id = obj! {"type" => s("IAMUser"), "principalId" => s(key_id(rng, "AIDA")),
                "arn" => s(format!("arn:aws:iam::{account}:user/{name}")), "accountId" => s(account),
                "accessKeyId" => s(key_id(rng, "AKIA")), "userName" => s(name)};
                if rng.gen_bool(0.4) {
                    id.push("sessionContext", obj! {"attributes" => obj! {"creationDate" => s(created), "mfaAuthenticated" => s("true")}});
                }
                id
            }
            Kind::ServiceRole | Kind::Instance | Kind::WebIdentity => {
                let role = format!(
                    "{}-{}-{:04}",
                    ["orders", "billing", "ingest", "search", "ml-train", "etl", "web"][i % 7],
                    ["prod", "staging", "dev"][i % 3],
                    i
                );
                let path = if i % 3 == 0 { "service-role/" } else { "" };
                let session = match kind {
                    Kind::Instance => format!("i-0{}", hex(rng, 16)),
                    Kind::WebIdentity => format!(
                        "botocore-session-{}",
                        rng.gen_range(1_700_000_000u64..1_800_000_000)
                    ),
                    _ => format!("{}-{}", role, hex(rng, 8)),
                };
                let mut context = obj! {"sessionIssuer" => obj! {"type" => s("Role"), "principalId" => s(role_id.clone()),
                    "arn" => s(format!("arn:aws:iam::{account}:role/{path}{role}")), "accountId" => s(account), "userName" => s(role)},
                "webIdFederationData" => match kind {
                    Kind::WebIdentity => obj! {"federatedProvider" => s(format!("arn:aws:iam::{account}:oidc-provider/oidc.eks.{home}.amazonaws.com/id/{}", hex(rng, 32).to_uppercase())), "attributes" => obj! {}},
                    _ => obj! {},
                },
                "attributes" => obj! {"creationDate" => s(created), "mfaAuthenticated" => s("false")}};
                if kind == Kind::Instance {
                    context.push("ec2RoleDelivery", s("2.0"));
                }
                obj! {"type" => s("AssumedRole"), "principalId" => s(format!("{role_id}:{session}")),
                "arn" => s(format!("arn:aws:sts::{account}:assumed-role/{}/{session}", role_name(&context))),
                "accountId" => s(account), "accessKeyId" => s(key_id(rng, "ASIA")), "sessionContext" => context}
            }
            Kind::IdentityCenter => {
                let set = [
                    "AdministratorAccess",
                    "PowerUserAccess",
                    "ReadOnlyAccess",
                    "DataEngineer",
                    "Billing",
                ][i % 5];
                let role = format!("AWSReservedSSO_{set}_{}", hex(rng, 16));
                let person = format!(
                    "{}.{}@example.com",
                    ["ana", "bo", "chen", "dara", "eli", "femi", "gus", "hana"][i % 8],
                    i
                );
                let mut context = obj! {"sessionIssuer" => obj! {"type" => s("Role"), "principalId" => s(role_id.clone()),
                    "arn" => s(format!("arn:aws:iam::{account}:role/aws-reserved/sso.amazonaws.com/{}/{role}", home)), "accountId" => s(account), "userName" => s(role.clone())},
                "webIdFederationData" => obj! {},
                "attributes" => obj! {"creationDate" => s(created), "mfaAuthenticated" => s("false")}};
                if rng.gen_bool(0.5) {
                    context.push("sourceIdentity", s(person.clone()));
                }
                obj! {"type" => s("AssumedRole"), "principalId" => s(format!("{role_id}:{person}")),
                "arn" => s(format!("arn:aws:sts::{account}:assumed-role/{role}/{person}")),
                "accountId" => s(account), "accessKeyId" => s(key_id(rng, "ASIA")), "sessionContext" => context}
            }
            Kind::AwsService => {
                let service = [
                    "cloudformation.amazonaws.com",
                    "autoscaling.amazonaws.com",
                    "config.amazonaws.com",
                    "elasticloadbalancing.amazonaws.com",
                    "backup.amazonaws.com",
                    "ssm.amazonaws.com",
                ][i % 6];
                obj! {"type" => s("AWSService"), "invokedBy" => s(service)}
            }
        };
        // Habits: a few services, one to five calls of each.
        let mut calls = Vec::new();
        for _ in 0..rng.gen_range(1..=5) {
            let service = SERVICES[rng.gen_range(0..SERVICES.len())].0;
            let of_service: Vec<usize> = (0..table.len())
                .filter(|&c| table[c].0 == service)
                .filter(|&c| !(kind == Kind::Instance && DISCOVERY.contains(&table[c].2)))
                .filter(|&c| {
                    table[c].2 != "ConsoleLogin" || matches!(kind, Kind::User | Kind::IdentityCenter)
                })
                .collect();
            for _ in 0..rng.gen_range(1..=5) {
                if let Some(&c) = of_service.choose(rng) {
                    if !calls.iter().any(|&(k, _)| k == c) {
                        calls.push((c, rng.gen_range(1..30)));
                    }
                }
            }
        }
        if calls.is_empty() {
            calls.push((0, 1));
        }
        let (ips, agents) = if kind == Kind::AwsService {
            let service = match &identity {
                J::Obj(entries) => match &entries[1].1 {
                    J::Str(text) => text.to_string(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (vec![service.clone()], vec![service])
        } else {
            let ips = (0..rng.gen_range(1..=3))
                .map(|_| match rng.gen_range(0..3) {
                    0 => format!(
                        "10.{}.{}.{}",
                        rng.gen_range(0..255),
                        rng.gen_range(0..255),
                        rng.gen_range(1..255)
                    ),
                    1 => format!(
                        "{}.{}.{}.{}",
                        [3, 18, 34, 52, 54][rng.gen_range(0..5)],
                        rng.gen_range(0..255),
                        rng.gen_range(0..255),
                        rng.gen_range(1..255)
                    ),
                    _ => format!(
                        "2a05:d018:{:x}:{:x}::{:x}",
                        rng.gen_range(0..0xffffu32),
                        rng.gen_range(0..0xffffu32),
                        rng.gen_range(1..0xffffu32)
                    ),
                })
                .collect();
            let agents = (0..rng.gen_range(1..=2)).map(|_| agent(rng, kind)).collect();
            (ips, agents)
        };
        let vpc_endpoint = (matches!(kind, Kind::ServiceRole | Kind::Instance) && rng.gen_bool(0.3))
            .then(|| format!("vpce-0{}", hex(rng, 16)));
        // Role credentials last an hour by default; instance profiles' are renewed about every
        // six, Identity Center and console sessions last a working day; long-term access keys
        // and services have no sessions.
        let session = match kind {
            Kind::ServiceRole | Kind::WebIdentity => Some(3_600),
            Kind::Instance => Some(6 * 3_600),
            Kind::IdentityCenter => Some(8 * 3_600),
            Kind::User if matches!(&identity, J::Obj(e) if e.iter().any(|(k, _)| k == "sessionContext")) => {
                Some(12 * 3_600)
            }
            Kind::User | Kind::AwsService => None,
        };
        principals.push(Principal {
            kind,
            account,
            regions,
            identity,
            session,
            credential_seed: rng.gen(),
            calls,
            ips,
            agents,
            vpc_endpoint,
            events: (total * weight / sum).round().max(1.0) as u32,
        });
    }
    principals
}

fn role_name(context: &J) -> String {
    if let J::Obj(entries) = context {
        if let Some((_, J::Obj(issuer))) = entries.first() {
            if let Some((_, J::Str(name))) = issuer.iter().find(|(k, _)| k == "userName") {
                return name.to_string();
            }
        }
    }
    String::new()
}

fn policy(rng: &mut ChaCha8Rng, account: &str, statements: usize) -> J {
    let actions = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "dynamodb:GetItem",
        "dynamodb:Query",
        "kms:Decrypt",
        "sqs:SendMessage",
        "logs:PutLogEvents",
        "ssm:GetParameter",
        "secretsmanager:GetSecretValue",
    ];
    J::Arr(
        (0..statements)
            .map(|k| {
                let picked: Vec<J> = (0..rng.gen_range(1..5)).map(|_| s(actions[rng.gen_range(0..actions.len())])).collect();
                obj! {"Sid" => s(format!("Stmt{k}{}", rng.gen_range(1000..9999))), "Effect" => s("Allow"), "Action" => J::Arr(picked),
                    "Resource" => J::Arr(vec![s(format!("arn:aws:s3:::data-{account}-{}", hex(rng, 6))), s(format!("arn:aws:s3:::data-{account}-{}/*", hex(rng, 6)))]),
                    "Condition" => obj! {"StringEquals" => obj! {"aws:PrincipalOrgID" => s("o-a1b2c3d4e5")}}}
            })
            .collect(),
    )
}

/// Request, response, additional data and resources of one call, by its service's shape.
#[allow(clippy::type_complexity)]
fn bodies(
    rng: &mut ChaCha8Rng,
    shape: Shape,
    source: &str,
    name: &str,
    account: &str,
    region: &str,
) -> (J, J, Option<J>, Option<J>) {
    let short = source.trim_end_matches(".amazonaws.com");
    let resource = format!(
        "{}-{}",
        ["orders", "events", "users", "audit", "cache", "reports"][rng.gen_range(0..6)],
        hex(rng, 6)
    );
    let arn = format!("arn:aws:{short}:{region}:{account}:{resource}");
    let reads = [
        "Get", "List", "Describe", "Head", "Search", "Batch", "Filter", "Query", "Decode",
    ]
    .iter()
    .any(|p| name.starts_with(p));
    match shape {
        Shape::Ec2 => {
            let n = tail_len(rng);
            let ids: Vec<J> = (0..n)
                .map(|_| obj! {"instanceId" => s(format!("i-0{}", hex(rng, 16)))})
                .collect();
            let request = obj! {"instancesSet" => obj! {"items" => J::Arr(ids)},
            "filterSet" => obj! {"items" => J::Arr(vec![obj! {"name" => s("tag:team"), "valueSet" => obj! {"items" => J::Arr(vec![obj! {"value" => s(resource.clone())}])}}])}};
            let response = if reads {
                J::Null
            } else {
                let items = (0..n)
                    .map(|_| {
                        let id = format!("i-0{}", hex(rng, 16));
                        obj! {"instanceId" => s(id), "imageId" => s(format!("ami-0{}", hex(rng, 16))), "currentState" => obj! {"code" => J::Int(16), "name" => s("running")},
                            "previousState" => obj! {"code" => J::Int(0), "name" => s("pending")}, "privateDnsName" => s(format!("ip-10-0-{}-{}.{region}.compute.internal", rng.gen_range(0..255), rng.gen_range(0..255))),
                            "instanceType" => s(["t3.medium", "m6i.large", "c7g.xlarge", "r6i.2xlarge"][rng.gen_range(0..4)]), "placement" => obj! {"availabilityZone" => s(format!("{region}a")), "tenancy" => s("default")},
                            "monitoring" => obj! {"state" => s("disabled")}, "subnetId" => s(format!("subnet-0{}", hex(rng, 16))), "vpcId" => s(format!("vpc-0{}", hex(rng, 16))),
                            "groupSet" => obj! {"items" => J::Arr(vec![obj! {"groupId" => s(format!("sg-0{}", hex(rng, 16))), "groupName" => s("default")}])},
                            "tagSet" => obj! {"items" => J::Arr(vec![obj! {"key" => s("team"), "value" => s(resource.clone())}, obj! {"key" => s("aws:cloudformation:stack-name"), "value" => s("platform")}])},
                            "networkInterfaceSet" => obj! {"items" => J::Arr(vec![obj! {"networkInterfaceId" => s(format!("eni-0{}", hex(rng, 16))), "privateIpAddress" => s(format!("10.0.{}.{}", rng.gen_range(0..255), rng.gen_range(1..255))), "sourceDestCheck" => J::Bool(true)}])}}
                    })
                    .collect();
                obj! {"requestId" => s(uuid(rng)), "reservationId" => s(format!("r-0{}", hex(rng, 16))), "ownerId" => s(account.to_owned()), "instancesSet" => obj! {"items" => J::Arr(items)}}
            };
            (request, response, None, None)
        }
        Shape::Iam => {
            let role = format!("{resource}-role");
            let statements = tail_len(rng);
            let document =
                obj! {"Version" => s("2012-10-17"), "Statement" => policy(rng, account, statements)};
            let request = match name {
                "CreateRole" => {
                    let trust = obj! {"Version" => s("2012-10-17"), "Statement" => J::Arr(vec![obj! {"Effect" => s("Allow"), "Principal" => obj! {"Service" => s("lambda.amazonaws.com")}, "Action" => s("sts:AssumeRole")}])};
                    obj! {"roleName" => s(role.clone()), "path" => s("/service-role/"), "assumeRolePolicyDocument" => s(trust.text(rng.gen_bool(0.5))), "maxSessionDuration" => J::Int(3600)}
                }
                "PutRolePolicy" | "CreatePolicy" => {
                    obj! {"roleName" => s(role.clone()), "policyName" => s(format!("{resource}-inline")), "policyDocument" => s(document.text(rng.gen_bool(0.5)))}
                }
                _ => obj! {"roleName" => s(role.clone())},
            };
            let response = match name {
                "CreateRole" | "GetRole" => {
                    obj! {"role" => obj! {"path" => s("/service-role/"), "roleName" => s(role.clone()), "roleId" => s(key_id(rng, "AROA")),
                    "arn" => s(format!("arn:aws:iam::{account}:role/service-role/{role}")), "createDate" => s("Mar 2, 2026, 10:00:00 AM"),
                    "assumeRolePolicyDocument" => s(url_encode(&document.text(false)))}}
                }
                "CreatePolicy" | "GetRolePolicy" | "GetPolicyVersion" => {
                    obj! {"policyName" => s(format!("{resource}-inline")), "policyDocument" => s(url_encode(&document.text(false)))}
                }
                _ => J::Null,
            };
            (request, response, None, None)
        }
        Shape::Sts => {
            let role = format!("arn:aws:iam::{account}:role/{resource}-access");
            let session = format!("{resource}-{}", rng.gen_range(1_700_000_000u64..1_800_000_000));
            let mut request = obj! {"roleArn" => s(role.clone()), "roleSessionName" => s(session.clone()), "durationSeconds" => J::Int(3600)};
            if name == "AssumeRoleWithWebIdentity" {
                request.push("providerId", s("sts.amazonaws.com"));
            }
            let response = obj! {"credentials" => obj! {"accessKeyId" => s(key_id(rng, "ASIA")), "sessionToken" => s(base64ish(rng, 600)), "expiration" => s("Mar 2, 2026, 11:00:00 AM")},
            "assumedRoleUser" => obj! {"assumedRoleId" => s(format!("{}:{session}", key_id(rng, "AROA"))), "arn" => s(format!("arn:aws:sts::{account}:assumed-role/{resource}-access/{session}"))},
            "packedPolicySize" => J::Int(rng.gen_range(1..20))};
            let resources = J::Arr(vec![
                obj! {"accountId" => s(account.to_owned()), "type" => s("AWS::IAM::Role"), "ARN" => s(role)},
            ]);
            (request, response, None, Some(resources))
        }
        Shape::S3Bucket | Shape::S3Object => {
            let bucket = format!("{resource}-{account}-{region}");
            let key = format!(
                "{}/{}/part-{:05}-{}.snappy.parquet",
                ["raw", "curated", "exports"][rng.gen_range(0..3)],
                format_time(1_772_409_600 + rng.gen_range(0..DAY * 30)).replace(':', "-"),
                rng.gen_range(0..2000),
                uuid(rng)
            );
            let mut request = obj! {"bucketName" => s(bucket.clone()), "Host" => s(format!("{bucket}.s3.{region}.amazonaws.com"))};
            match name {
                "GetBucketAcl" => request.push("acl", s("")),
                "GetBucketVersioning" => request.push("versioning", s("")),
                "GetBucketTagging" | "PutBucketTagging" => request.push("tagging", s("")),
                "ListObjects" | "ListObjectsV2" => {
                    request.push("list-type", s("2"));
                    request.push("prefix", s("raw/"));
                    request.push("encoding-type", s("url"));
                }
                _ => {}
            }
            let mut resources = vec![
                obj! {"accountId" => s(account.to_owned()), "type" => s("AWS::S3::Bucket"), "ARN" => s(format!("arn:aws:s3:::{bucket}"))},
            ];
            if shape == Shape::S3Object {
                request.push("key", s(key.clone()));
                resources.insert(
                    0,
                    obj! {"type" => s("AWS::S3::Object"), "ARN" => s(format!("arn:aws:s3:::{bucket}/{key}"))},
                );
            }
            let extra = obj! {"SignatureVersion" => s("SigV4"), "CipherSuite" => s("TLS_AES_128_GCM_SHA256"), "bytesTransferredIn" => J::Int(if reads { 0 } else { rng.gen_range(0..10_000_000) }),
            "AuthenticationMethod" => s("AuthHeader"), "x-amz-id-2" => s(base64ish(rng, 76)), "bytesTransferredOut" => J::Int(if reads { rng.gen_range(0..10_000_000) } else { 0 })};
            let response = if shape == Shape::S3Object && !reads {
                obj! {"x-amz-server-side-encryption" => s("aws:kms"), "x-amz-server-side-encryption-aws-kms-key-id" => s(format!("arn:aws:kms:{region}:{account}:key/{}", uuid(rng))), "x-amz-server-side-encryption-bucket-key-enabled" => s("true")}
            } else {
                J::Null
            };
            (request, response, Some(extra), Some(J::Arr(resources)))
        }
        Shape::Kms => {
            let key = format!("arn:aws:kms:{region}:{account}:key/{}", uuid(rng));
            let mut context = obj! {};
            for _ in 0..rng.gen_range(1..4) {
                let (k, v) = match rng.gen_range(0..3) {
                    0 => (
                        "aws:lambda:FunctionArn",
                        format!("arn:aws:lambda:{region}:{account}:function:{resource}"),
                    ),
                    1 => (
                        "aws:s3:arn",
                        format!("arn:aws:s3:::{resource}-{account}/{}", uuid(rng)),
                    ),
                    _ => ("aws:dynamodb:tableName", resource.clone()),
                };
                context.push(k, s(v));
            }
            let request = obj! {"keyId" => s(key.clone()), "encryptionAlgorithm" => s("SYMMETRIC_DEFAULT"), "encryptionContext" => context, "keySpec" => s("AES_256")};
            let resources = J::Arr(vec![
                obj! {"accountId" => s(account.to_owned()), "type" => s("AWS::KMS::Key"), "ARN" => s(key)},
            ]);
            (request, J::Null, None, Some(resources))
        }
        Shape::DataPlane => {
            let request = match source {
                "lambda.amazonaws.com" => {
                    obj! {"functionName" => s(arn.clone()), "invocationType" => s("RequestResponse"), "qualifier" => s("$LATEST")}
                }
                _ => {
                    obj! {"tableName" => s(resource.clone()), "key" => obj! {"pk" => obj! {"S" => s(uuid(rng))}, "sk" => obj! {"S" => s(format!("order#{}", rng.gen_range(0..1_000_000)))}}, "consistentRead" => J::Bool(false)}
                }
            };
            let kind = if source == "lambda.amazonaws.com" {
                "AWS::Lambda::Function"
            } else {
                "AWS::DynamoDB::Table"
            };
            let resources = J::Arr(vec![
                obj! {"accountId" => s(account.to_owned()), "type" => s(kind), "ARN" => s(arn)},
            ]);
            (request, J::Null, None, Some(resources))
        }
        Shape::Config => {
            let tags: Vec<J> = (0..tail_len(rng))
                .map(|k| obj! {"key" => s(format!("tag{k}")), "value" => s(hex(rng, 12))})
                .collect();
            let settings = obj! {"Version" => s("2012-10-17"), "Statement" => policy(rng, account, 1)};
            let request = if reads {
                obj! {"name" => s(arn.clone())}
            } else {
                obj! {"name" => s(arn.clone()), "tags" => J::Arr(tags), "definition" => s(settings.text(rng.gen_bool(0.5))), "clientToken" => s(uuid(rng))}
            };
            let response = if reads {
                J::Null
            } else {
                obj! {"arn" => s(arn), "status" => s("UPDATING"), "lastModified" => s(format_time(1_772_409_600))}
            };
            (request, response, None, None)
        }
        Shape::Plain => {
            if source == "signin.amazonaws.com" {
                let extra = obj! {"LoginTo" => s("https://console.aws.amazon.com/console/home"), "MobileVersion" => s("No"), "MFAIdentifier" => s(format!("arn:aws:iam::{account}:mfa/device")), "MFAUsed" => s("Yes")};
                return (J::Null, obj! {"ConsoleLogin" => s("Success")}, Some(extra), None);
            }
            let token = rng.gen_range(0..120);
            let request = if name.starts_with("List") {
                obj! {"maxResults" => J::Int(100), "nextToken" => s(base64ish(rng, token))}
            } else {
                obj! {"resourceArn" => s(arn.clone()), "name" => s(resource.clone())}
            };
            let response = if reads {
                J::Null
            } else {
                obj! {"arn" => s(arn), "requestId" => s(uuid(rng))}
            };
            (request, response, None, None)
        }
    }
}

/// The request of a call a shipped rule flags, as the rule's tests show it.
fn matching_request(name: &str, account: &str, region: &str) -> J {
    match name {
        "AttachRolePolicy" => {
            obj! {"roleName" => s("ops-break-glass"), "policyArn" => s("arn:aws:iam::aws:policy/AdministratorAccess")}
        }
        "GetPasswordData" => obj! {"instanceId" => s("i-0a1b2c3d4e5f60718")},
        "StopLogging" | "UpdateTrail" => {
            obj! {"name" => s(format!("arn:aws:cloudtrail:{region}:{account}:trail/org-trail"))}
        }
        "ScheduleKeyDeletion" => {
            obj! {"keyId" => s(format!("arn:aws:kms:{region}:{account}:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")), "pendingWindowInDays" => J::Int(7)}
        }
        "DeleteAlarms" => obj! {"alarmNames" => J::Arr(vec![s("root-login"), s("billing-spike")])},
        "SendSSHPublicKey" => {
            obj! {"instanceId" => s("i-0a1b2c3d4e5f60718"), "instanceOSUser" => s("ec2-user"), "sSHPublicKey" => s("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB")}
        }
        "StartSession" => obj! {"target" => s("i-0a1b2c3d4e5f60718")},
        "DeleteDetector" => obj! {"detectorId" => s("12abc34d567e8fa901bc2d34e56789f0")},
        "GetFederationToken" => obj! {"name" => s("contractor"), "durationSeconds" => J::Int(129_600)},
        _ => obj! {},
    }
}

const ERRORS: &[(&str, &str)] = &[
    ("ThrottlingException", "Rate exceeded"),
    ("ResourceNotFoundException", "Requested resource not found"),
    ("ValidationException", "1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null"),
    ("NoSuchEntity", "The role with name orders-prod cannot be found."),
    ("Client.InvalidInstanceID.NotFound", "The instance ID 'i-0123456789abcdef0' does not exist"),
    ("ConditionalCheckFailedException", "The conditional request failed"),
    ("AccessDenied", "User: arn:aws:sts::111122223333:assumed-role/etl-prod/x is not authorized to perform: s3:GetObject on resource: \"arn:aws:s3:::reports\" because no identity-based policy allows the s3:GetObject action"),
];

/// `principal`'s identity as a record made at `time` shows it. Temporary credentials are new for
/// each session: a fresh `ASIA` access key and the session's `creationDate`, and for web-identity
/// roles a session name with the session's start (`botocore-session-<epoch>`). So the same
/// identity's text changes from session to session, as in production, where a cache of identity
/// texts meets a new one at each session's first record.
fn session_identity(principal: &Principal, time: i64) -> J {
    let Some(length) = principal.session else {
        return principal.identity.clone();
    };
    let phase = (principal.credential_seed % length as u64) as i64;
    let number = (time - phase).div_euclid(length);
    let started = number * length + phase;
    let mut rng = ChaCha8Rng::seed_from_u64(principal.credential_seed ^ (number as u64).rotate_left(29));
    let key = key_id(&mut rng, "ASIA");
    let web_session = (principal.kind == Kind::WebIdentity).then(|| format!("botocore-session-{started}"));
    let mut identity = principal.identity.clone();
    renew(&mut identity, &key, &format_time(started), web_session.as_deref());
    identity
}

/// Sets, at any depth of `value`, `accessKeyId` to `key`, `creationDate` to `created`, and the
/// session name ending `principalId` and `arn` to `session` when given.
fn renew(value: &mut J, key: &str, created: &str, session: Option<&str>) {
    let J::Obj(entries) = value else {
        return;
    };
    for (name, value) in entries.iter_mut() {
        match (&**name, &mut *value) {
            ("accessKeyId", J::Str(text)) => *text = Cow::Owned(key.to_owned()),
            ("creationDate", J::Str(text)) => *text = Cow::Owned(created.to_owned()),
            ("principalId" | "arn", J::Str(text))
                if session.is_some() && text.contains("botocore-session-") =>
            {
                let (head, _) = text.rsplit_once("botocore-session-").unwrap_or((text, ""));
                *text = Cow::Owned(format!("{head}{}", session.unwrap_or_default()));
            }
            (_, J::Obj(_)) => renew(value, key, created, session),
            _ => {}
        }
    }
}

/// `agent`, naming the call when it is the AWS CLI's: the CLI ends its agent with the command it
/// runs (`md/command#ec2.describe-instances`), so a person's agent changes from call to call.
fn with_command(agent: &str, source: &str, name: &str) -> String {
    let Some((head, _)) = agent
        .rsplit_once("md/command#")
        .filter(|_| agent.starts_with("aws-cli/"))
    else {
        return agent.to_owned();
    };
    let service = source.split('.').next().unwrap_or(source);
    // `UpdateFunctionCode20150331v2` is the CLI's `update-function-code`.
    let operation = name.split(|c: char| c.is_ascii_digit()).next().unwrap_or(name);
    let mut command = String::with_capacity(operation.len() + 4);
    for (i, c) in operation.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            command.push('-');
        }
        command.push(c.to_ascii_lowercase());
    }
    format!("{head}md/command#{service}.{command}")
}

/// Builds one record in CloudTrail's key order.
fn record(
    plan: &Planned,
    principal: &Principal,
    table: &[(&'static str, Shape, &'static str)],
    rule_share: f64,
) -> (J, bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let nth = plan.nth as usize;
    let matching = rng.gen_bool(rule_share.clamp(0.0, 1.0));
    let (source, shape, name) = if matching {
        let (source, name) = MATCHING[rng.gen_range(0..MATCHING.len())];
        (source, Shape::Plain, name)
    } else if nth < principal.calls.len() {
        table[principal.calls[nth].0]
    } else {
        let total: u32 = principal.calls.iter().map(|c| c.1).sum();
        let mut x = rng.gen_range(0..total);
        let mut picked = table[principal.calls[0].0];
        for &(c, weight) in &principal.calls {
            if x < weight {
                picked = table[c];
                break;
            }
            x -= weight;
        }
        picked
    };
    let global = matches!(
        source,
        "iam.amazonaws.com"
            | "sts.amazonaws.com"
            | "cloudfront.amazonaws.com"
            | "route53.amazonaws.com"
            | "organizations.amazonaws.com"
            | "signin.amazonaws.com"
            | "health.amazonaws.com"
            | "ce.amazonaws.com"
    );
    let region = if global {
        "us-east-1"
    } else {
        principal.regions[nth % principal.regions.len()]
    };
    let account = principal.account;
    let ip = principal.ips[if nth < principal.ips.len() {
        nth
    } else {
        rng.gen_range(0..principal.ips.len())
    }]
    .clone();
    let agent = with_command(
        &principal.agents[if nth < principal.agents.len() {
            nth
        } else {
            rng.gen_range(0..principal.agents.len())
        }],
        source,
        name,
    );
    let (request, response, extra, resources) = if matching {
        (matching_request(name, account, region), J::Null, None, None)
    } else {
        bodies(&mut rng, shape, source, name, account, region)
    };
    let data = matches!(shape, Shape::S3Object | Shape::DataPlane);
    let read_only = [
        "Get", "List", "Describe", "Head", "Search", "Batch", "Filter", "Query", "Decode",
    ]
    .iter()
    .any(|p| name.starts_with(p));
    let console = source == "signin.amazonaws.com";
    let mut r = obj! {
        "eventVersion" => s(if data { "1.10" } else { "1.09" }),
        "userIdentity" => session_identity(principal, plan.time),
        "eventTime" => s(format_time(plan.time)),
        "eventSource" => s(source),
        "eventName" => s(name),
        "awsRegion" => s(region),
        "sourceIPAddress" => s(ip),
        "userAgent" => s(agent),
    };
    if !matching && !console && rng.gen_bool(0.03) {
        // A denied call now and then, far too rarely for the access-denied burst rule.
        let denied = usize::from(rng.gen_bool(0.1));
        let (code, message) = ERRORS[rng.gen_range(0..ERRORS.len() - 1 + denied)];
        r.push("errorCode", s(code));
        r.push("errorMessage", s(message));
    }
    r.push("requestParameters", request);
    r.push("responseElements", response);
    if let Some(extra) = extra {
        r.push("additionalEventData", extra);
    }
    r.push("requestID", s(uuid(&mut rng)));
    r.push("eventID", s(uuid(&mut rng)));
    r.push("readOnly", J::Bool(read_only));
    if let Some(resources) = resources {
        r.push("resources", resources);
    }
    r.push(
        "eventType",
        s(if console { "AwsConsoleSignIn" } else { "AwsApiCall" }),
    );
    if source == "lambda.amazonaws.com" && !data {
        r.push("apiVersion", s("2015-03-31"));
    }
    r.push("managementEvent", J::Bool(!data));
    r.push("recipientAccountId", s(account));
    if source == "sts.amazonaws.com" && rng.gen_bool(0.3) {
        r.push("sharedEventID", s(uuid(&mut rng)));
    }
    if let (Some(endpoint), false) = (&principal.vpc_endpoint, global) {
        r.push("vpcEndpointId", s(endpoint.clone()));
        r.push("vpcEndpointAccountId", s(account));
    }
    r.push("eventCategory", s(if data { "Data" } else { "Management" }));
    if principal.kind != Kind::AwsService {
        let host = if source == "s3.amazonaws.com" {
            format!("s3.{region}.amazonaws.com")
        } else {
            format!(
                "{}.{region}.amazonaws.com",
                source.trim_end_matches(".amazonaws.com")
            )
        };
        r.push("tlsDetails", obj! {"tlsVersion" => s("TLSv1.3"), "cipherSuite" => s("TLS_AES_128_GCM_SHA256"), "clientProvidedHostHeader" => s(host)});
    }
    if principal.kind == Kind::IdentityCenter && principal.agents[0].starts_with("Mozilla") {
        r.push("sessionCredentialFromConsole", s("true"));
    }
    (r, matching)
}

/// Spreads a principal's events over the days: people on weekdays in office hours, the rest
/// around the clock.
fn event_time(rng: &mut ChaCha8Rng, options: &RealisticOptions, kind: Kind) -> i64 {
    let days = i64::from(options.days.max(1));
    loop {
        let day = rng.gen_range(0..days);
        let human = matches!(kind, Kind::User | Kind::IdentityCenter);
        if human && day % 7 >= 5 && rng.gen_bool(0.95) {
            continue;
        }
        let second = if human {
            rng.gen_range(8 * 3600..19 * 3600)
        } else {
            rng.gen_range(0..DAY)
        };
        return options.start + day * DAY + second;
    }
}

/// Generates a realistic trail under `options.out`.
pub fn generate_realistic(options: &RealisticOptions) -> std::io::Result<GenerateReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let table = calls();
    let principals = build_principals(&mut rng, options, &table);
    let mut planned = Vec::new();
    for (p, principal) in principals.iter().enumerate() {
        let mut times: Vec<i64> = (0..principal.events)
            .map(|_| event_time(&mut rng, options, principal.kind))
            .collect();
        times.sort_unstable();
        for (nth, time) in times.into_iter().enumerate() {
            planned.push(Planned {
                time,
                principal: p as u32,
                nth: nth as u32,
                seed: rng.gen(),
            });
        }
    }
    planned.sort_by_key(|p| (p.time, p.principal, p.nth));

    // Files: one per account, region and five minutes, a few records delivered a file late. The
    // region is the record's, which depends on its call: read it from the same seed.
    let mut files: BTreeMap<(i64, &str, &str), Vec<usize>> = BTreeMap::new();
    for (i, plan) in planned.iter().enumerate() {
        let principal = &principals[plan.principal as usize];
        let (record, _) = record(plan, principal, &table, options.rule_share);
        let region = match &record {
            J::Obj(entries) => match &entries[5].1 {
                J::Str(region) => REGIONS
                    .iter()
                    .find(|r| **r == region.as_ref())
                    .copied()
                    .unwrap_or("us-east-1"),
                _ => "us-east-1",
            },
            _ => "us-east-1",
        };
        let span = options.file_span.max(1);
        let mut slot = plan.time.div_euclid(span);
        if rng.gen_bool(0.02) {
            slot += 1;
        }
        files
            .entry((slot, principal.account, region))
            .or_default()
            .push(i);
    }

    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("labels.jsonl"), "")?;
    let mut named = Vec::with_capacity(files.len());
    let mut digests = std::collections::BTreeSet::new();
    for ((slot, account, region), indices) in files {
        let delivered = (slot + 1) * options.file_span.max(1) + rng.gen_range(0..180);
        let (stamp, dir, name) = log_file(&options.out, account, region, delivered, &mut rng);
        let sorted = rng.gen_bool(0.25);
        named.push((dir, name, sorted, indices));
        digests.insert((
            stamp.format("%Y/%m/%d").to_string(),
            stamp.format("%Y%m%dT000000Z").to_string(),
            account,
            region,
        ));
    }

    // Files are independent: written on every core, each byte fixed by the plan above.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::io::Result<(usize, usize)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut records, mut matched) = (0, 0);
                    let mut text = String::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((dir, name, sorted, indices)) = named.get(i) else {
                            return Ok((records, matched));
                        };
                        text.clear();
                        text.push_str("{\"Records\":[");
                        for (k, &index) in indices.iter().enumerate() {
                            let plan = &planned[index];
                            let (record, matching) = record(
                                plan,
                                &principals[plan.principal as usize],
                                &table,
                                options.rule_share,
                            );
                            if k > 0 {
                                text.push(',');
                            }
                            record.write(*sorted, &mut text);
                            records += 1;
                            matched += usize::from(matching);
                        }
                        text.push_str("]}");
                        write_gz(dir, name, text.as_bytes())?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a writer panicked")))
            })
            .collect()
    });
    let mut report = GenerateReport {
        files: named.len(),
        ..GenerateReport::default()
    };
    for result in results {
        let (records, matched) = result?;
        report.records += records;
        report.labeled += matched;
    }
    if report.labeled > 0 {
        report.incidents.insert("rule_match", report.labeled);
    }
    report.labeled = 0;
    for (date, stamp, account, region) in digests {
        let dir = options
            .out
            .join(format!("AWSLogs/{account}/CloudTrail-Digest/{region}/{date}"));
        let name = format!("{account}_CloudTrail-Digest_{region}_org-trail_{region}_{stamp}.json.gz");
        let digest = format!("{{\"awsAccountId\":\"{account}\",\"digestStartTime\":\"{stamp}\",\"digestEndTime\":\"{stamp}\",\"digestS3Bucket\":\"trail-bucket\",\"digestSignatureAlgorithm\":\"SHA256withRSA\",\"logFiles\":[]}}");
        write_gz(&dir, &name, digest.as_bytes())?;
    }
    Ok(report)
}

fn write_gz(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::create(dir.join(name))?;
    let mut gz =
        flate2::GzBuilder::new().write(std::io::BufWriter::new(file), flate2::Compression::default());
    gz.write_all(bytes)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_two_hundred_calls_over_forty_services() {
        let table = calls();
        let services: std::collections::BTreeSet<&str> = table.iter().map(|c| c.0).collect();
        assert!(table.len() >= 200, "{} calls", table.len());
        assert!(services.len() >= 40, "{} services", services.len());
    }

    fn small(out: &Path, rule_share: f64) -> RealisticOptions {
        RealisticOptions {
            out: out.to_owned(),
            principals: 60,
            days: 3,
            events_per_day: 20.0,
            rule_share,
            file_span: 3_600,
            ..RealisticOptions::default()
        }
    }

    fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                (
                    e.path().strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// Rule matches and anomalies of a replay of `dir` with the shipped rules.
    fn replayed(dir: &Path) -> (u64, u64) {
        let (inputs, _) = crate::replay::list_inputs(&[dir.join("AWSLogs")]).unwrap();
        let rules = std::sync::Arc::new(crate::rules::RuleSet::builtin().unwrap());
        let summary = crate::replay::replay(
            inputs,
            &crate::config::Settings::default(),
            Some(rules),
            &mut std::io::sink(),
            &|_| {},
        )
        .unwrap();
        (summary.rule_matches.values().sum(), summary.records)
    }

    #[test]
    fn the_same_options_give_the_same_bytes() {
        let temp = tempfile::tempdir().unwrap();
        let (a, b) = (temp.path().join("a"), temp.path().join("b"));
        let report = generate_realistic(&small(&a, 0.05)).unwrap();
        generate_realistic(&small(&b, 0.05)).unwrap();
        assert!(report.records > 1000, "{report:?}");
        assert_eq!(files(&a), files(&b));
    }

    #[test]
    fn no_shipped_rule_matches_a_quiet_trail_and_a_storm_matches_as_asked() {
        let temp = tempfile::tempdir().unwrap();
        let (quiet, storm) = (temp.path().join("quiet"), temp.path().join("storm"));
        generate_realistic(&small(&quiet, 0.0)).unwrap();
        let report = generate_realistic(&small(&storm, 0.2)).unwrap();
        let (matches, records) = replayed(&quiet);
        assert_eq!(
            matches, 0,
            "rule matches in a trail of {records} records meant to have none"
        );
        let asked = report.incidents.get("rule_match").copied().unwrap_or(0) as u64;
        let (matches, records) = replayed(&storm);
        assert!(asked > records / 10, "{asked} matching records of {records}");
        // Repeats of one rule and principal within the dedup window fold into one anomaly.
        assert!(
            matches > asked / 4 && matches <= asked,
            "{matches} rule matches for {asked} matching records"
        );
    }

    #[test]
    fn sorted_writing_sorts_every_level_and_escapes_strings() {
        let value = obj! {"b" => obj! {"z" => J::Int(1), "a" => s("x\"y\n")}, "a" => J::Null};
        let (mut plain, mut sorted) = (String::new(), String::new());
        value.write(false, &mut plain);
        value.write(true, &mut sorted);
        assert_eq!(plain, r#"{"b":{"z":1,"a":"x\"y\n"},"a":null}"#);
        assert_eq!(sorted, r#"{"a":null,"b":{"a":"x\"y\n","z":1}}"#);
        let parsed: serde_json::Value = serde_json::from_str(&plain).expect("valid JSON");
        assert_eq!(parsed["b"]["a"], "x\"y\n");
    }
}
