"""Checks what kubernetes-validate cannot: the ServiceMonitor against the
fields its CRD requires (and that it selects a Service port that exists),
every vmcp config in a ConfigMap with `vmcp validate`, and that each
Deployment's terminationGracePeriodSeconds stays above the longest shutdown
its vmcp config allows (http.drain_delay + http.shutdown_timeout, plus the
seconds the process may take to exit), so Kubernetes never SIGKILLs a drain.

Usage: check_rendered.py RENDERED.yaml VMCP_BINARY
"""
import os
import subprocess
import sys
import tempfile

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


ENV = {"VMCP_REPLICA_ID": "vmcp-0", "VMCP_HOP_KEY": "0123456789abcdef0123", "REDIS_PASSWORD": "x", "ALPHA_KEY": "x"}


def main(path, vmcp):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    services = [d for d in docs if d.get("kind") == "Service"]
    checked = 0
    longest_stop = 0
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
            http = (yaml.safe_load(text) or {}).get("http") or {}
            stop = seconds(http.get("drain_delay"), 5) + seconds(http.get("shutdown_timeout"), 20)
            longest_stop = max(longest_stop, stop)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
                tmp.write(text)
            try:
                run = subprocess.run([vmcp, "validate", "--config", tmp.name], env={**os.environ, **ENV}, capture_output=True, text=True)
                assert run.returncode == 0, f"{path}: ConfigMap {doc['metadata']['name']}/{name}: {run.stderr or run.stdout}"
            finally:
                os.unlink(tmp.name)
            checked += 1
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
    main(sys.argv[1], sys.argv[2])
