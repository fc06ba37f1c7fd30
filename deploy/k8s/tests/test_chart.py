"""The Helm chart, offline: lint, schema, strict Kubernetes validation of every
rendered manifest, and the invariants an operator relies on.

Helm itself renders (helm-python-sdk wraps Helm's Go code); kubernetes-validate
checks each manifest against the Kubernetes JSON schemas of the oldest supported
and the newest release. Run by scripts/test.
"""

import base64
import json
import pathlib
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "mxlimit"
DOCS = CHART.parent.parent.parent / "docs" / "DEPLOY.md"
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
RELEASE, NAMESPACE = "mx", "mail"
FULL = "mx-mxlimit"
PASSWORD = "r3dis-s3cret-for-the-test"

# The value sets CI renders, besides the defaults. The admin token waits for the
# limiter's admin API.

# The Prometheus Operator's ServiceMonitor is a CRD, so kubernetes-validate has no
# schema for it: this one holds the fields the chart sets (from the operator's CRD).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        },
                    },
                },
            },
        },
    },
}
ADMIN_TOKEN = "admin-token-ADMIN-SECRET-0123456789"
VALUE_SETS = {
    "defaults": {},
    "external-redis-cluster": {
        "redis": {
            "external": {
                "urls": [f"redis://redis-{i}.redis.db.svc:6379" for i in range(3)],
                "username": "mxlimit",
                "password": PASSWORD,
            },
            "prefix": "mx-prod",
        },
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "rules": {"policy": 'shadow = true\n[client_rate]\nwindow = "60s"\n', "rollOnChange": True},
    },
    "redis-cluster-mutual-tls": {
        "redis": {"external": {"urls": [f"rediss://redis-{i}.redis.db.svc:6379" for i in range(6)],
                               "existingSecret": "redis-auth",
                               "tls": {"existingSecret": "redis-client-cert", "clientCert": True}}},
        "tls": {"enabled": True, "existingSecret": "mxlimit-cert", "clientCA": {"enabled": True}},
        "admin": {"existingSecret": "mxlimit-admin", "certNames": ["admin.mail.example"]},
        "agent": {"enabled": True, "tls": {"existingSecret": "mxlimit-agent-cert"}},
        "networkPolicy": {"enabled": True},
    },
    "tls-inline": {
        "redis": {"bundled": {"enabled": True}},
        "admin": {"token": ADMIN_TOKEN},
        "tls": {"enabled": True, "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "key": "-----BEGIN PRIVATE KEY-----\nTLS-KEY-SECRET-MATERIAL\n-----END PRIVATE KEY-----\n",
                "clientCA": {"enabled": True, "pem": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"}},
    },
    "existing-secret": {
        "redis": {"external": {"urls": ["redis://redis.db.svc:6379"], "existingSecret": "redis-auth"}},
        "limiter": {"replicas": 3},
    },
    "bundled-redis": {
        "redis": {"bundled": {"enabled": True, "requirePassword": True}, "external": {"password": PASSWORD}},
    },
    "agent-daemonset": {
        "redis": {"bundled": {"enabled": True}},
        "agent": {"enabled": True, "nodeSelector": {"mxlimit.io/mx": "true"}, "milter": "inet:7026@127.0.0.1"},
    },
    "networkpolicy-servicemonitor": {
        "redis": {"bundled": {"enabled": True}},
        "agent": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "networkPolicy": {"enabled": True, "extraIngress": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]},
    },
}


@pytest.fixture(scope="module")
def chart():
    return helm.Chart.load(str(CHART))


def render(chart, values):
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = path
                docs.append(doc)
    return docs


def notes(chart, values):
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean_in_strict_mode(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_validates_strictly_against_kubernetes(chart, name, kube):
    docs = render(chart, VALUE_SETS[name])
    assert docs
    for d in docs:
        manifest = {k: v for k, v in d.items() if k != "_template"}
        if manifest["kind"] == "ServiceMonitor":
            jsonschema.validate(manifest, SERVICE_MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(manifest, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{d['_template']} ({d['kind']}) on {kube}: {path}: {e.message}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_has_probes_resources_and_runs_unprivileged(chart, name):
    docs = render(chart, VALUE_SETS[name])
    for d, spec in pod_specs(docs):
        where = f"{d['kind']}/{d['metadata']['name']}"
        assert spec.get("automountServiceAccountToken") is False, where
        pod_sc = spec.get("securityContext", {})
        for c in spec["containers"]:
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser", 0) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            res = c.get("resources", {})
            assert res.get("requests", {}).get("memory"), where
            assert res.get("limits", {}).get("memory"), where
            if d["kind"] != "Pod":  # the helm test pod runs once and exits
                assert c.get("livenessProbe") and c.get("readinessProbe"), where
        # A Secret mounted with a restrictive mode must be readable by the pod's group.
        for v in spec.get("volumes", []):
            mode = v.get("secret", {}).get("defaultMode")
            if mode is not None and not mode & 0o004:
                assert pod_sc.get("fsGroup"), f"{where}: {v['name']} unreadable without fsGroup"


def test_limiter_probes_use_grpc_health_and_readiness_follows_the_store(chart):
    docs = render(chart, VALUE_SETS["external-redis-cluster"])
    c = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["grpc"] == {"port": 7525}
    assert c["readinessProbe"]["grpc"] == {"port": 7525, "service": "mxlimit.v1.Limiter"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_secrets_are_never_inlined_outside_secrets(chart, name):
    docs = render(chart, VALUE_SETS[name])
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for d in docs:
        text = json.dumps(d)
        if d["kind"] == "Secret":
            continue
        assert PASSWORD not in text, f"{d['kind']}/{d['metadata']['name']} holds the password"
        assert "TLS-KEY-SECRET-MATERIAL" not in text, f"{d['kind']}/{d['metadata']['name']} holds the TLS key"
        assert "ADMIN-SECRET" not in text, f"{d['kind']}/{d['metadata']['name']} holds the admin token"
        assert encoded not in text, f"{d['kind']}/{d['metadata']['name']} holds the password (base64)"


def test_the_redis_password_reaches_the_limiter_as_a_mounted_secret_file(chart):
    docs = render(chart, VALUE_SETS["external-redis-cluster"])
    secret = one(docs, "Secret", f"{FULL}-redis-auth")
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == PASSWORD
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MXLIMIT_REDIS"] == ",".join(VALUE_SETS["external-redis-cluster"]["redis"]["external"]["urls"])
    assert env["MXLIMIT_REDIS_USERNAME"] == "mxlimit"
    assert env["MXLIMIT_REDIS_PASSWORD_FILE"] == "/etc/mxlimit-redis/password"
    vol = next(v for v in spec["volumes"] if v["name"] == "redis-auth")
    assert vol["secret"]["secretName"] == f"{FULL}-redis-auth"
    # An existing Secret is referenced, never copied.
    docs = render(chart, VALUE_SETS["existing-secret"])
    assert not kinds(docs, "Secret")
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    vol = next(v for v in spec["volumes"] if v["name"] == "redis-auth")
    assert vol["secret"] == {"secretName": "redis-auth", "defaultMode": 0o440,
                             "items": [{"key": "redis-password", "path": "password"}]}


def test_the_admin_token_reaches_the_limiter_as_a_mounted_secret_file(chart):
    docs = render(chart, VALUE_SETS["tls-inline"])
    secret = one(docs, "Secret", f"{FULL}-admin")
    assert base64.b64decode(secret["data"]["token"]).decode() == ADMIN_TOKEN
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MXLIMIT_ADMIN_TOKEN_FILE"] == "/etc/mxlimit-admin/token"
    vol = next(v for v in spec["volumes"] if v["name"] == "admin-token")
    assert vol["secret"]["secretName"] == f"{FULL}-admin"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "admin-token")
    assert mount["mountPath"] == "/etc/mxlimit-admin" and "subPath" not in mount
    # An existing Secret is referenced, never copied; certificate names go along.
    docs = render(chart, VALUE_SETS["redis-cluster-mutual-tls"])
    assert not [d for d in kinds(docs, "Secret") if d["metadata"]["name"].endswith("-admin")]
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MXLIMIT_ADMIN_CERT_NAME"] == "admin.mail.example"
    vol = next(v for v in spec["volumes"] if v["name"] == "admin-token")
    assert vol["secret"]["secretName"] == "mxlimit-admin"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]
    # Without credentials there is no token file, and NOTES say the API is off.
    spec = one(render(chart, VALUE_SETS["defaults"]), "Deployment", FULL)["spec"]["template"]["spec"]
    assert not [e for e in spec["containers"][0]["env"] if e["name"].startswith("MXLIMIT_ADMIN")]
    assert "The Admin API is off" in notes(chart, VALUE_SETS["defaults"])


def test_tls_material_is_mounted_from_secrets_and_probes_use_the_plaintext_health_port(chart):
    docs = render(chart, VALUE_SETS["redis-cluster-mutual-tls"])
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MXLIMIT_TLS_CERT"] == "/etc/mxlimit-tls/tls.crt"
    assert env["MXLIMIT_TLS_KEY"] == "/etc/mxlimit-tls/tls.key"
    assert env["MXLIMIT_TLS_CLIENT_CA"] == "/etc/mxlimit-client-ca/ca.crt"
    assert env["MXLIMIT_HEALTH_LISTEN"] == "0.0.0.0:7526"
    assert env["MXLIMIT_REDIS"].startswith("rediss://")
    assert env["MXLIMIT_REDIS_TLS_CA"] == "/etc/mxlimit-redis-tls/ca.crt"
    assert env["MXLIMIT_REDIS_TLS_CERT"] == "/etc/mxlimit-redis-tls/tls.crt"
    assert env["MXLIMIT_REDIS_TLS_KEY"] == "/etc/mxlimit-redis-tls/tls.key"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["redis-tls"]["secret"]["secretName"] == "redis-client-cert"
    assert vols["tls"]["secret"]["secretName"] == "mxlimit-cert"
    # cert-manager's Secret carries the issuing CA as ca.crt.
    assert vols["client-ca"]["secret"]["secretName"] == "mxlimit-cert"
    assert vols["client-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    for m in c["volumeMounts"]:
        assert "subPath" not in m, "a subPath mount never sees a renewed certificate"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == 7526
    assert not kinds(docs, "Secret"), "existing Secrets are referenced, never copied"
    svc = one(docs, "Service", FULL)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 7525, "health": 7526, "metrics": 9425}
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["spec"]["containers"][0]["args"] == [f"--health-check={FULL}.{NAMESPACE}.svc.cluster.local:7526"]
    np = one(docs, "NetworkPolicy", FULL)
    assert [p["port"] for p in np["spec"]["ingress"][0]["ports"]] == ["grpc", "health"]
    assert np["spec"]["ingress"][1] == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}
    # The agents trust the limiter's CA and present their own certificate.
    agent = one(docs, "DaemonSet", f"{FULL}-agent")["spec"]["template"]["spec"]
    aenv = {e["name"]: e.get("value") for e in agent["containers"][0]["env"]}
    assert aenv["MXAGENT_TLS_CA"] == "/etc/mxlimit-agent-tls/ca.crt"
    assert aenv["MXAGENT_TLS_CERT"] == "/etc/mxlimit-agent-tls/tls.crt"
    assert aenv["MXAGENT_TLS_KEY"] == "/etc/mxlimit-agent-tls/tls.key"
    assert agent["volumes"] == [{"name": "tls", "secret": {"secretName": "mxlimit-agent-cert", "defaultMode": 0o440}}]


def test_inline_tls_material_goes_into_a_secret_of_the_chart(chart):
    values = VALUE_SETS["tls-inline"]
    docs = render(chart, values)
    secret = one(docs, "Secret", f"{FULL}-tls")
    assert base64.b64decode(secret["data"]["tls.key"]).decode() == values["tls"]["key"]
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == values["tls"]["clientCA"]["pem"]
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    vols = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert vols["tls"] == vols["client-ca"] == f"{FULL}-tls"


def test_a_spread_constraint_with_its_own_selector_keeps_it(chart):
    own = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"team": "mail"}}}
    d = one(render(chart, {"limiter": {"topologySpreadConstraints": [own]}}), "Deployment", FULL)
    assert d["spec"]["template"]["spec"]["topologySpreadConstraints"] == [own]


def test_the_checksum_rolls_the_pods_when_the_rules_change_and_only_then(chart):
    values = VALUE_SETS["external-redis-cluster"]

    def checksum(policy):
        v = json.loads(json.dumps(values))
        v["rules"]["policy"] = policy
        d = one(render(chart, v), "Deployment", FULL)
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]

    a = checksum('[client_rate]\naddress = 60\n')
    assert a == checksum('[client_rate]\naddress = 60\n')
    assert a != checksum('[client_rate]\naddress = 30\n')
    # Without rollOnChange the pods reload the mounted files instead: no annotation.
    d = one(render(chart, VALUE_SETS["defaults"]), "Deployment", FULL)
    assert "checksum/rules" not in (d["spec"]["template"]["metadata"].get("annotations") or {})


def test_rules_are_mounted_whole_so_that_updates_reach_the_running_limiter(chart):
    docs = render(chart, VALUE_SETS["external-redis-cluster"])
    cm = one(docs, "ConfigMap", f"{FULL}-rules")
    assert "shadow = true" in cm["data"]["policy.toml"]
    spec = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]
    c = spec["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "rules")
    assert "subPath" not in mount and mount["mountPath"] == "/etc/mxlimit"
    assert "--policy=/etc/mxlimit/policy.toml" in c["args"]
    assert "--access=/etc/mxlimit/access" in c["args"]


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", VALUE_SETS)
def test_services_select_exactly_the_limiter_pods(chart, name):
    docs = render(chart, VALUE_SETS[name])
    limiter = one(docs, "Deployment", FULL)["spec"]["template"]["metadata"]["labels"]
    others = [d["spec"]["template"]["metadata"]["labels"] for d in docs
              if d["kind"] in ("Deployment", "DaemonSet") and d["metadata"]["name"] != FULL]
    headless = one(docs, "Service", f"{FULL}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    for svc in (headless, one(docs, "Service", FULL)):
        sel = svc["spec"]["selector"]
        assert labels_match(sel, limiter), svc["metadata"]["name"]
        assert not any(labels_match(sel, o) for o in others), svc["metadata"]["name"]
    pdb = one(docs, "PodDisruptionBudget", FULL)
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], limiter)


def test_the_service_monitor_scrapes_the_limiters_metrics_port(chart):
    docs = render(chart, VALUE_SETS["networkpolicy-servicemonitor"])
    sm = one(docs, "ServiceMonitor", FULL)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    selected = [s for s in kinds(docs, "Service")
                if labels_match(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    with_metrics = [s for s in selected if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in with_metrics] == [FULL]
    c = one(docs, "Deployment", FULL)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MXLIMIT_METRICS_LISTEN", "value": "0.0.0.0:9425"} in c["env"]
    agent = one(docs, "DaemonSet", f"{FULL}-agent")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MXAGENT_METRICS_LISTEN", "value": "0.0.0.0:9426"} in agent["env"]
    # Without the operator's CRDs there is no ServiceMonitor.
    assert not kinds(render(chart, {}), "ServiceMonitor")


def test_agents_find_every_limiter_pod_through_the_headless_service(chart):
    docs = render(chart, VALUE_SETS["agent-daemonset"])
    ds = one(docs, "DaemonSet", f"{FULL}-agent")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"mxlimit.io/mx": "true"}
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["MXAGENT_LIMITER_DNS"]["value"] == f"{FULL}-headless.{NAMESPACE}.svc.cluster.local:7525"
    assert env["MXAGENT_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # inet:PORT@HOST (sendmail's spelling) is probed on the right port.
    assert spec["containers"][0]["readinessProbe"]["tcpSocket"] == {"host": "127.0.0.1", "port": 7026}


def test_network_policies_admit_the_callers_and_keep_redis_to_the_limiter(chart):
    docs = render(chart, VALUE_SETS["networkpolicy-servicemonitor"])
    limiter = one(docs, "Deployment", FULL)["spec"]["template"]["metadata"]["labels"]
    agent = one(docs, "DaemonSet", f"{FULL}-agent")["spec"]["template"]["metadata"]["labels"]
    test_pod = next(d for d in docs if d["kind"] == "Pod")["metadata"]["labels"]
    np = one(docs, "NetworkPolicy", FULL)
    assert labels_match(np["spec"]["podSelector"]["matchLabels"], limiter)
    peers = np["spec"]["ingress"][0]["from"]
    selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert any(labels_match(s, agent) for s in selectors)
    assert any(labels_match(s, test_pod) for s in selectors), "helm test could not reach the limiter"
    assert {"ipBlock": {"cidr": "198.51.100.0/24"}} in peers
    rnp = one(docs, "NetworkPolicy", f"{FULL}-redis")
    (only,) = rnp["spec"]["ingress"][0]["from"]
    assert labels_match(only["podSelector"]["matchLabels"], limiter)
    assert not labels_match(only["podSelector"]["matchLabels"], agent)


def test_defaults_run_one_in_memory_limiter_and_say_so(chart):
    docs = render(chart, {})
    d = one(docs, "Deployment", FULL)
    assert d["spec"]["replicas"] == 1
    env = {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MXLIMIT_REDIS" not in env
    assert "IN MEMORY" in notes(chart, {})
    assert not kinds(docs, "HorizontalPodAutoscaler") and not kinds(docs, "DaemonSet")
    # With Redis the default is two pods.
    d = one(render(chart, VALUE_SETS["existing-secret"] | {"limiter": {}}), "Deployment", FULL)
    assert d["spec"]["replicas"] == 2


def test_the_helm_test_pod_checks_health_through_the_service(chart):
    docs = render(chart, {})
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == [
        f"--health-check={FULL}.{NAMESPACE}.svc.cluster.local:7525"
    ]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"limiter": {"replicas": 3}}, "needs Redis"),
        ({"autoscaling": {"enabled": True}}, "needs Redis"),
        ({"redis": {"external": {"urls": ["redis://r:6379"]}, "bundled": {"enabled": True}}}, "not both"),
        ({"redis": {"bundled": {"enabled": True, "requirePassword": True}}}, "requirePassword needs"),
        ({"tls": {"enabled": True}}, "tls.enabled needs"),
        ({"redis": {"bundled": {"enabled": True}, "external": {"password": "p"}}}, "set redis.bundled.requirePassword"),
        ({"tls": {"enabled": True, "cert": "c", "key": "k", "clientCA": {"enabled": True}}}, "tls.clientCA.enabled needs"),
        ({"tls": {"enabled": True, "existingSecret": "s"}, "redis": {"bundled": {"enabled": True}},
          "agent": {"enabled": True}}, "agent.tls.existingSecret"),
        ({"admin": {"certNames": ["admin.mail.example"]}}, "admin.certNames needs mutual TLS"),
    ],
)
def test_contradictory_values_fail_with_a_clear_message(chart, values, message):
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    "values",
    [
        {"redis": {"external": {"urls": ["redis://:hunter2@r:6379"]}}},  # a password in a URL
        {"redis": {"external": {"urls": ["http://r:6379"]}}},
        {"limiter": {"replicsa": 2}},  # a typo
        {"limiter": {"logFormat": "xml"}},
        {"agent": {"fallback": "maybe"}},
        {"limiter": {"redisTimeout": "half a second"}},
        {"redis": {"prefix": "{mxl}"}},  # braces would put every key in one cluster slot
        {"admin": {"token": "short"}},  # guessable
        {"admin": {"token": "a token with spaces in it"}},
    ],
)
def test_the_schema_refuses_bad_values(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)


def leaf_paths(schema, prefix=""):
    props = schema.get("properties")
    if not props:
        yield prefix
        return
    for k, sub in props.items():
        path = f"{prefix}.{k}" if prefix else k
        if sub.get("properties"):
            yield from leaf_paths(sub, path)
        else:
            yield path


def test_every_value_is_documented_in_the_deployment_guide_with_its_default():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    guide = DOCS.read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z0-9_.]+)` \| ([^|]*) \|", guide, re.M))
    documented = set(rows)
    paths = set(leaf_paths(schema))
    assert paths - documented == set(), "undocumented values"
    assert documented - paths == set(), "documented values the chart does not have"
    for path in paths:
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        assert node.get("description"), f"{path} has no description in values.schema.json"
        cell = rows[path].strip()
        if cell.startswith("`"):
            value = defaults
            for part in path.split("."):
                value = value[part]
            assert json.loads(cell.strip("`")) == value, f"{path}: the guide says {cell}"
