"""Checks what kubernetes-validate cannot: the ServiceMonitor against the
fields its CRD requires (and that it selects a Service port that exists), and
every vmcp config in a ConfigMap with `vmcp validate`.

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

ENV = {"VMCP_REPLICA_ID": "vmcp-0", "VMCP_HOP_KEY": "0123456789abcdef0123", "REDIS_PASSWORD": "x", "ALPHA_KEY": "x"}


def main(path, vmcp):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    services = [d for d in docs if d.get("kind") == "Service"]
    checked = 0
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
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
                tmp.write(text)
            try:
                run = subprocess.run([vmcp, "validate", "--config", tmp.name], env={**os.environ, **ENV}, capture_output=True, text=True)
                assert run.returncode == 0, f"{path}: ConfigMap {doc['metadata']['name']}/{name}: {run.stderr or run.stdout}"
            finally:
                os.unlink(tmp.name)
            checked += 1
    print(f"{path}: {checked} ServiceMonitor/config object(s) checked")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
