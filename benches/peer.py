#!/usr/bin/env python3
"""A plain Python implementation of trailwatch's job, the benchmark's peer.

Reads every CloudTrail log file under the given folders (gzip JSON, digests skipped), drops
duplicate eventIDs, keys each record to its principal as trailwatch does, keeps per-principal
baselines over the same dimensions (eventSource, eventSource+eventName, sourceIPAddress, its
network, user agent family, awsRegion, errorCode) in a 30-day event-time window with the same
maturity rule, flags new values, hourly rate spikes, error spikes and dormant principals waking
up, and evaluates the shipped rules' families as plain predicates. Anomalies are serialised as
JSON lines (to /dev/null unless --output is given), as trailwatch writes them.

Files are shared among --workers processes (default 2, the cores trailwatch is measured on), each
keeping the baselines of the principals its files hold: the peer does the same work per record as
one process owning every principal, without trailwatch's routing.

Prints one line: records, anomalies, seconds. Uses orjson where installed, else json.
"""

import multiprocessing
import os
import sys
import time
import zlib

try:
    import orjson

    loads, dumps = orjson.loads, orjson.dumps
    PARSER = "orjson"
except ImportError:  # pragma: no cover - depends on the machine
    import json

    loads = json.loads
    dumps = lambda v: json.dumps(v).encode()  # noqa: E731
    PARSER = "json"

WINDOW = 30 * 86400
MATURE_SPAN = 7 * 86400
MATURE_EVENTS = 50
MAX_VALUES = 64
DORMANT = 14 * 86400

DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


def has(r, *path):
    v = r
    for p in path:
        if not isinstance(v, dict) or p not in v:
            return False
        v = v[p]
    return True


def get(r, *path):
    v = r
    for p in path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


def names(source, *calls):
    calls = frozenset(calls)
    return lambda r: r.get("eventSource") == source and r.get("eventName") in calls


# The shipped rules' families as plain predicates over the parsed record.
RULES = [
    ("cloudtrail_logging_stopped", names("cloudtrail.amazonaws.com", "StopLogging", "DeleteTrail", "StopEventDataStoreIngestion", "DeleteEventDataStore")),
    ("cloudtrail_trail_modified", names("cloudtrail.amazonaws.com", "UpdateTrail", "PutEventSelectors", "PutInsightSelectors")),
    ("cloudwatch_alarms_disabled", names("monitoring.amazonaws.com", "DeleteAlarms", "DisableAlarmActions")),
    ("log_group_deleted", lambda r: names("logs.amazonaws.com", "DeleteLogGroup", "DeleteLogStream")(r) and not has(r, "userIdentity", "invokedBy")),
    ("config_disabled", names("config.amazonaws.com", "StopConfigurationRecorder", "DeleteConfigurationRecorder", "DeleteDeliveryChannel")),
    ("guardduty_disabled", names("guardduty.amazonaws.com", "DeleteDetector", "DisassociateFromMasterAccount", "DisassociateFromAdministratorAccount", "StopMonitoringMembers", "DeleteMembers")),
    ("securityhub_disabled", names("securityhub.amazonaws.com", "DisableSecurityHub", "DeleteInsight", "DisableImportFindingsForProduct")),
    ("ebs_default_encryption_disabled", names("ec2.amazonaws.com", "DisableEbsEncryptionByDefault")),
    ("ec2_password_data", names("ec2.amazonaws.com", "GetPasswordData")),
    ("ec2_user_data_read", lambda r: names("ec2.amazonaws.com", "DescribeInstanceAttribute")(r) and get(r, "requestParameters", "attribute") == "userData"),
    ("ec2_instance_connect", names("ec2-instance-connect.amazonaws.com", "SendSSHPublicKey", "SendSerialConsoleSSHPublicKey")),
    ("ec2_traffic_mirroring", names("ec2.amazonaws.com", "CreateTrafficMirrorSession", "CreateTrafficMirrorTarget")),
    ("ec2_gpu_instance", lambda r: names("ec2.amazonaws.com", "RunInstances")(r) and str(get(r, "requestParameters", "instanceType") or "").startswith(("p3.", "p4d.", "p5.", "g5.", "g6.", "inf2.", "trn1."))),
    ("kms_key_deletion", names("kms.amazonaws.com", "ScheduleKeyDeletion")),
    ("iam_admin_policy_attached", lambda r: names("iam.amazonaws.com", "AttachUserPolicy", "AttachGroupPolicy", "AttachRolePolicy")(r) and str(get(r, "requestParameters", "policyArn") or "").endswith(":policy/AdministratorAccess")),
    ("iam_inline_admin_policy", lambda r: names("iam.amazonaws.com", "PutUserPolicy", "PutRolePolicy", "PutGroupPolicy")(r) and '"Action":"*"' in str(get(r, "requestParameters", "policyDocument") or "").replace(" ", "")),
    ("iam_access_key_for_other_user", lambda r: names("iam.amazonaws.com", "CreateAccessKey")(r) and has(r, "requestParameters", "userName") and get(r, "requestParameters", "userName") != get(r, "userIdentity", "userName")),
    ("iam_mfa_removed", names("iam.amazonaws.com", "DeactivateMFADevice", "DeleteVirtualMFADevice")),
    ("iam_identity_provider_changed", names("iam.amazonaws.com", "CreateSAMLProvider", "UpdateSAMLProvider", "CreateOpenIDConnectProvider", "UpdateOpenIDConnectProviderThumbprint", "AddClientIDToOpenIDConnectProvider")),
    ("iam_authorization_details", lambda r: names("iam.amazonaws.com", "GetAccountAuthorizationDetails")(r) and not has(r, "userIdentity", "invokedBy")),
    ("iam_role_trust_changed", names("iam.amazonaws.com", "UpdateAssumeRolePolicy")),
    ("lambda_made_public", lambda r: r.get("eventSource") == "lambda.amazonaws.com" and str(r.get("eventName", "")).startswith("AddPermission") and get(r, "requestParameters", "principal") == "*"),
    ("leave_organization", names("organizations.amazonaws.com", "LeaveOrganization")),
    ("root_usage", lambda r: get(r, "userIdentity", "type") == "Root" and not has(r, "userIdentity", "invokedBy")),
    ("console_login_failure", lambda r: names("signin.amazonaws.com", "ConsoleLogin")(r) and get(r, "responseElements", "ConsoleLogin") == "Failure"),
    ("console_login_without_mfa", lambda r: names("signin.amazonaws.com", "ConsoleLogin")(r) and get(r, "additionalEventData", "MFAUsed") == "No" and get(r, "responseElements", "ConsoleLogin") == "Success"),
    ("pentest_user_agent", lambda r: any(k in str(r.get("userAgent", "")).lower() for k in ("kali", "parrot", "pentoo"))),
    ("s3_versioning_suspended", lambda r: names("s3.amazonaws.com", "PutBucketVersioning")(r) and get(r, "requestParameters", "VersioningConfiguration", "Status") == "Suspended"),
    ("s3_public_access", names("s3.amazonaws.com", "DeleteBucketPublicAccessBlock", "PutBucketAcl")),
    ("snapshot_shared", names("ec2.amazonaws.com", "ModifySnapshotAttribute", "ModifyImageAttribute")),
    ("ssm_start_session", names("ssm.amazonaws.com", "StartSession", "ResumeSession")),
    ("ssm_send_command", names("ssm.amazonaws.com", "SendCommand")),
    ("sts_federation_token", names("sts.amazonaws.com", "GetFederationToken")),
    ("vpc_flow_logs_deleted", names("ec2.amazonaws.com", "DeleteFlowLogs")),
    ("security_group_open", lambda r: names("ec2.amazonaws.com", "AuthorizeSecurityGroupIngress")(r) and "0.0.0.0/0" in str(get(r, "requestParameters", "ipPermissions"))),
    ("bedrock_invoked", lambda r: names("bedrock.amazonaws.com", "InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream")(r) and not has(r, "userIdentity", "invokedBy")),
    ("access_denied", lambda r: str(r.get("errorCode") or "").startswith("Unauthorized") or str(r.get("errorCode") or "").endswith(DENIED)),
]


def principal_key(r):
    ui = r.get("userIdentity")
    if not isinstance(ui, dict):
        return "unknown"
    kind = ui.get("type")
    if kind == "AssumedRole":
        issuer = get(ui, "sessionContext", "sessionIssuer", "arn")
        return issuer or ui.get("arn") or "assumed:" + str(ui.get("principalId"))
    if kind == "AWSService":
        return "service:" + str(ui.get("invokedBy"))
    if kind in ("IAMUser", "Root", "FederatedUser"):
        return ui.get("arn") or "%s:%s" % (kind, ui.get("principalId"))
    return "%s:%s:%s" % (kind, ui.get("accountId"), ui.get("principalId") or ui.get("userName") or ui.get("invokedBy"))


def network(ip):
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + "::/48"
    parts = ip.split(".")
    return ".".join(parts[:3]) + ".0/24" if len(parts) == 4 else ip


def agent_family(agent):
    return agent.split("/", 1)[0].split(" ", 1)[0] if agent else ""


def parse_time(text):
    # "2026-03-02T10:00:00Z": seconds since the epoch, without datetime's cost.
    try:
        y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
        h, mi, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
    except (TypeError, ValueError):
        return None
    a = (14 - mo) // 12
    yy, mm = y + 4800 - a, mo + 12 * a - 3
    jdn = d + (153 * mm + 2) // 5 + 365 * yy + yy // 4 - yy // 100 + yy // 400 - 32045
    return (jdn - 2440588) * 86400 + h * 3600 + mi * 60 + s


class Principal:
    __slots__ = ("first", "last", "events", "dims", "hours", "errors")

    def __init__(self, t):
        self.first = t
        self.last = t
        self.events = 0
        self.dims = {}
        self.hours = {}
        self.errors = {}


def process(paths):
    seen = set()
    principals = {}
    out = open(os.environ.get("PEER_OUTPUT", os.devnull), "ab")
    records = anomalies = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
            if data[:2] == b"\x1f\x8b":
                data = zlib.decompress(data, 31)
            doc = loads(data)
        except (OSError, ValueError, zlib.error):
            continue
        recs = doc.get("Records") if isinstance(doc, dict) else None
        if not isinstance(recs, list):
            continue
        for r in recs:
            records += 1
            if not isinstance(r, dict):
                continue
            eid = r.get("eventID")
            if eid in seen:
                continue
            seen.add(eid)
            t = parse_time(r.get("eventTime"))
            if t is None:
                continue
            key = principal_key(r)
            found = []
            for rule, test in RULES:
                if test(r):
                    found.append({"kind": "rule_match", "rule": rule})
            p = principals.get(key)
            if p is None:
                p = principals[key] = Principal(t)
            elif t - p.last > DORMANT:
                found.append({"kind": "dormant_principal", "idle_seconds": t - p.last})
            mature = t - p.first >= MATURE_SPAN and p.events >= MATURE_EVENTS
            source = r.get("eventSource") or ""
            ip = r.get("sourceIPAddress") or ""
            error = r.get("errorCode")
            values = (
                ("eventSource", source),
                ("eventName", source + ":" + str(r.get("eventName"))),
                ("sourceIPAddress", ip),
                ("network", network(ip)),
                ("userAgent", agent_family(r.get("userAgent"))),
                ("awsRegion", r.get("awsRegion") or ""),
                ("errorCode", error),
            )
            novel = []
            for dim, value in values:
                if value is None:
                    continue
                held = p.dims.get(dim)
                if held is None:
                    held = p.dims[dim] = {}
                entry = held.get(value)
                if entry is None or t - entry[1] > WINDOW:
                    if mature:
                        novel.append({"name": dim, "value": value, "distinct": len(held)})
                    if len(held) >= MAX_VALUES:
                        del held[min(held, key=lambda v: held[v][1])]
                    held[value] = [t, t, 1]
                else:
                    entry[1] = max(entry[1], t)
                    entry[2] += 1
            if novel:
                found.append({"kind": "new_value", "dimensions": novel})
            hour = t // 3600
            n = p.hours.get(hour, 0) + 1
            p.hours[hour] = n
            if len(p.hours) > 24 * 30:
                for h in [h for h in p.hours if h < hour - 24 * 30]:
                    del p.hours[h]
            if mature and n > 20:
                mean = (p.events - n) / max(1, len(p.hours) - 1)
                if n == int(4 * mean) + 1:
                    found.append({"kind": "rate_spike", "count": n, "mean": mean})
            if error is not None:
                e = p.errors.get(hour, 0) + 1
                p.errors[hour] = e
                if mature and e == 10:
                    found.append({"kind": "error_spike", "count": e})
            p.events += 1
            p.last = max(p.last, t)
            for a in found:
                a.update(
                    schema="trailwatch.anomaly/v1",
                    principal=key,
                    event_time=r.get("eventTime"),
                    evidence={
                        "event_ids": [eid],
                        "event_name": r.get("eventName"),
                        "event_source": source,
                        "source_ip": ip,
                        "user_agent": r.get("userAgent"),
                        "aws_region": r.get("awsRegion"),
                        "error_code": error,
                    },
                )
                out.write(dumps(a) + b"\n")
                anomalies += 1
    out.close()
    return records, anomalies


def main():
    args = sys.argv[1:]
    workers = 2
    if "--workers" in args:
        i = args.index("--workers")
        workers = int(args[i + 1])
        del args[i : i + 2]
    paths = []
    for root in args:
        for folder, _, files in os.walk(root):
            if "CloudTrail-Digest" in folder:
                continue
            paths.extend(os.path.join(folder, f) for f in files if f.endswith((".json.gz", ".json")))
    paths.sort()
    started = time.perf_counter()
    shares = [paths[i::workers] for i in range(workers)]
    if workers == 1:
        results = [process(paths)]
    else:
        with multiprocessing.Pool(workers) as pool:
            results = pool.map(process, shares)
    took = time.perf_counter() - started
    records = sum(r for r, _ in results)
    anomalies = sum(a for _, a in results)
    print("records %d anomalies %d seconds %.3f parser %s" % (records, anomalies, took, PARSER))


if __name__ == "__main__":
    main()
