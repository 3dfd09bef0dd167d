"""Checks what kubernetes-validate cannot: the ServiceMonitor against the
fields its CRD requires (and that it selects a Service port that exists),
every vmcp config in a ConfigMap with `vmcp validate`, and that each
Deployment's terminationGracePeriodSeconds stays above the longest shutdown
its vmcp config allows (http.drain_delay + http.shutdown_timeout, plus the
seconds the process may take to exit), so Kubernetes never SIGKILLs a drain.

Sidecar mode: every `local: true` backend must be on localhost, on a port of a
container of the same pod other than vmcp, which has a readinessProbe and a
preStop that keeps it up through vmcp's drain. `--sidecar NAME` also asserts
that the server container NAME is there and that the config has the backend
NAME, local; `--replicated` that the config shares sessions through Redis and
finds its peers through the headless Service.

Usage: check_rendered.py RENDERED.yaml VMCP_BINARY [--sidecar NAME] [--replicated]
"""
import argparse
import os
import subprocess
import tempfile
from urllib.parse import urlparse

import jsonschema
import yaml

# The parts of monitoring.coreos.com/v1 ServiceMonitor that this chart uses.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object", "minProperties": 1}}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {"port": {"type": "string"}, "path": {"type": "string"}, "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}},
                        "additionalProperties": False,
                    },
                },
            },
        },
    },
}

# vmcp's own exit margin beyond drain_delay + shutdown_timeout (main.rs: EXIT_GRACE twice), plus 1 s.
EXIT_MARGIN_S = 3
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(duration, default):
    """A vmcp duration as the chart writes them (`500ms`, `5s`, `1m`), in seconds."""
    if duration is None:
        return default
    text = str(duration).strip()
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * UNITS[unit]
    raise AssertionError(f"duration {text!r}: expected a number and ms, s, m or h")


ENV = {"VMCP_REPLICA_ID": "vmcp-0", "VMCP_HOP_KEY": "0123456789abcdef0123", "REDIS_PASSWORD": "x", "REDIS_SENTINEL_PASSWORD": "x", "ALPHA_KEY": "x", "TICKETS_CLIENT_SECRET": "x", "VMCP_INTROSPECTION_SECRET": "x", "VMCP_ADMIN_TOKEN": "0123456789abcdef0123"}


LOCALHOST = ("127.0.0.1", "localhost", "::1")


def check_local_backends(path, deployment, config, stop, sidecar):
    """The pod-local backends of `config` against the pod of `deployment`."""
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    where = f"{path}: Deployment {deployment['metadata']['name']}"
    backends = config.get("backends") or []
    if sidecar:
        assert sidecar in containers, f"{where}: no server container {sidecar!r} (has {sorted(containers)})"
        named = [b for b in backends if b.get("name") == sidecar]
        assert named and named[0].get("local") is True, f"{where}: no backend {sidecar!r} with local: true in {backends}"
        context = containers[sidecar].get("securityContext") or {}
        assert context.get("runAsNonRoot") is True and context.get("allowPrivilegeEscalation") is False, f"{where}: {sidecar}: {context}"
        assert "ALL" in (context.get("capabilities") or {}).get("drop", []), f"{where}: {sidecar} keeps capabilities"
    for backend in backends:
        if not backend.get("local"):
            continue
        url = urlparse(backend.get("url") or "")
        assert url.scheme == "http" and url.hostname in LOCALHOST, (
            f"{where}: local backend {backend['name']}: {backend.get('url')!r} is not on localhost"
        )
        servers = [c for c in pod["containers"] if c["name"] != "vmcp" and any(p.get("containerPort") == url.port for p in c.get("ports") or [])]
        assert servers, f"{where}: local backend {backend['name']}: no container of the pod declares port {url.port}"
        server = servers[0]
        assert server.get("readinessProbe"), f"{where}: {server['name']}: no readinessProbe (the pod would be ready before its server)"
        pre_stop = (server.get("lifecycle") or {}).get("preStop")
        assert pre_stop, f"{where}: {server['name']}: no preStop (it would stop before vmcp's drain ends)"
        if "sleep" in pre_stop:
            assert pre_stop["sleep"]["seconds"] >= stop, f"{where}: {server['name']}: preStop sleeps {pre_stop['sleep']['seconds']} s < drain {stop} s"
            grace = pod.get("terminationGracePeriodSeconds", 30)
            assert grace > pre_stop["sleep"]["seconds"], f"{where}: {server['name']}: preStop outlasts the grace period {grace} s"


def check_replicated(path, docs, deployment, config):
    where = f"{path}: --replicated"
    assert (config.get("store") or {}).get("kind") == "redis", f"{where}: store is {config.get('store')}"
    membership = config.get("membership") or {}
    assert membership.get("kind") == "kubernetes", f"{where}: membership is {membership}"
    peers = [d for d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == membership["kubernetes"]["service"]]
    assert peers and peers[0]["spec"].get("clusterIP") == "None", f"{where}: no headless Service {membership['kubernetes']['service']}"
    assert (config.get("affinity") or {}).get("hop_key"), f"{where}: no affinity.hop_key"
    assert deployment["spec"].get("replicas", 2) > 1, f"{where}: Deployment {deployment['metadata']['name']} has one replica"


def main(path, vmcp, sidecar=None, replicated=False):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    services = [d for d in docs if d.get("kind") == "Service"]
    checked = 0
    longest_stop = 0
    configs = {}  # ConfigMap name -> (vmcp config, drain_delay + shutdown_timeout)
    for doc in docs:
        if doc.get("kind") == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)
            labels = doc["spec"]["selector"]["matchLabels"]
            ports = {p.get("name") for s in services if labels.items() <= s["metadata"].get("labels", {}).items() for p in s["spec"]["ports"]}
            for endpoint in doc["spec"]["endpoints"]:
                assert endpoint["port"] in ports, f"ServiceMonitor port {endpoint['port']} not on a selected Service"
            checked += 1
        for name, text in (doc.get("data") or {}).items() if doc.get("kind") == "ConfigMap" else []:
            if not name.endswith(".yaml") or "listen:" not in text:
                continue
            config = yaml.safe_load(text) or {}
            http = config.get("http") or {}
            stop = seconds(http.get("drain_delay"), 5) + seconds(http.get("shutdown_timeout"), 20)
            longest_stop = max(longest_stop, stop)
            configs[doc["metadata"]["name"]] = (config, stop)
            policy = (doc.get("data") or {}).get("policy.cedar")
            if policy is not None:
                with tempfile.NamedTemporaryFile("w", suffix=".cedar", delete=False) as cedar:
                    cedar.write(policy)
                text = text.replace("/etc/vmcp/policy.cedar", cedar.name)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
                tmp.write(text)
            try:
                run = subprocess.run([vmcp, "validate", "--config", tmp.name], env={**os.environ, **ENV}, capture_output=True, text=True)
                assert run.returncode == 0, f"{path}: ConfigMap {doc['metadata']['name']}/{name}: {run.stderr or run.stdout}"
            finally:
                os.unlink(tmp.name)
            checked += 1
    sidecars_seen = 0
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        volumes = doc["spec"]["template"]["spec"].get("volumes") or []
        for name in [v["configMap"]["name"] for v in volumes if "configMap" in v and v["configMap"]["name"] in configs]:
            config, stop = configs[name]
            check_local_backends(path, doc, config, stop, sidecar)
            sidecars_seen += 1 if sidecar else 0
            if replicated:
                check_replicated(path, docs, doc, config)
    assert not sidecar or sidecars_seen, f"{path}: --sidecar {sidecar}: no Deployment mounts a vmcp config"
    assert not replicated or configs, f"{path}: --replicated: no vmcp config"
    for doc in docs:
        if doc.get("kind") != "Deployment" or not longest_stop:
            continue
        grace = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        needed = longest_stop + EXIT_MARGIN_S
        assert grace >= needed, (
            f"{path}: Deployment {doc['metadata']['name']}: terminationGracePeriodSeconds {grace} < "
            f"drain_delay + shutdown_timeout + {EXIT_MARGIN_S} s = {needed}"
        )
        checked += 1
    print(f"{path}: {checked} ServiceMonitor/config/Deployment object(s) checked")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(usage=__doc__.rsplit("Usage: ", 1)[1])
    parser.add_argument("rendered")
    parser.add_argument("vmcp")
    parser.add_argument("--sidecar", metavar="NAME")
    parser.add_argument("--replicated", action="store_true")
    args = parser.parse_args()
    main(args.rendered, args.vmcp, args.sidecar, args.replicated)
