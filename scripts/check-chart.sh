#!/usr/bin/env bash
# Checks the Helm chart and manifests/: helm lint --strict; renders with the
# default values and with ci/full-values.yaml (3 replicas, HPA, ServiceMonitor,
# bundled Redis); validates every object against the Kubernetes 1.31 OpenAPI
# schemas (kubernetes-validate --strict), the ServiceMonitor against the fields
# its CRD requires, and the rendered vmcp config with `vmcp validate`; fails if
# manifests/ is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
out="$PWD/target/chart"
mkdir -p "$out"
"$helm" lint --strict charts/vmcp
"$helm" lint --strict charts/vmcp -f charts/vmcp/ci/full-values.yaml
"$helm" template vmcp charts/vmcp > "$out/default.yaml"
"$helm" template vmcp charts/vmcp -f charts/vmcp/ci/full-values.yaml > "$out/full.yaml"
if "$helm" template vmcp charts/vmcp --set replicaCount=3 >/dev/null 2>&1; then
  echo "several replicas without Redis must not render"; exit 1
fi
vmcp_bin="${CARGO_TARGET_DIR:-target}/debug/vmcp"
[ -x "$vmcp_bin" ] || cargo build --locked --quiet --bin vmcp
for f in "$out/default.yaml" "$out/full.yaml" manifests/*.yaml; do
  "$venv/bin/kubernetes-validate" -k 1.31.0 --strict --quiet "$f"
  "$venv/bin/python" scripts/check_rendered.py "$f" "$vmcp_bin"
done
scripts/render-manifests.sh --check
echo "chart and manifests: ok"
