#!/usr/bin/env bash
# Checks the Helm chart and manifests/: helm lint --strict; renders with the
# default values, with ci/full-values.yaml (3 replicas, HPA, ServiceMonitor,
# bundled Redis), in sidecar mode with one replica and with ci/sidecar-values.yaml
# (3 replicas on Redis, every sidecar value set), on Redis Sentinel and on Redis
# Cluster (ci/sentinel-values.yaml, ci/cluster-values.yaml); validates every object against
# the Kubernetes 1.31 OpenAPI schemas (kubernetes-validate --strict), the
# ServiceMonitor against the fields its CRD requires, the rendered vmcp config
# with `vmcp validate`, and in sidecar mode the server container and its
# localhost `local: true` backend (scripts/check_rendered.py); checks that
# several replicas without Redis, or with two Redis topologies, do not render; fails if manifests/ is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
out="$PWD/target/chart"
mkdir -p "$out"
sidecar=(--set sidecar.enabled=true --set sidecar.image.repository=ghcr.io/example/stateful-mcp-server --set sidecar.image.tag=1.0)
"$helm" lint --strict charts/vmcp
"$helm" lint --strict charts/vmcp -f charts/vmcp/ci/full-values.yaml
"$helm" lint --strict charts/vmcp -f charts/vmcp/ci/sidecar-values.yaml
"$helm" lint --strict charts/vmcp -f charts/vmcp/ci/sentinel-values.yaml
"$helm" lint --strict charts/vmcp -f charts/vmcp/ci/cluster-values.yaml
"$helm" template vmcp charts/vmcp > "$out/default.yaml"
"$helm" template vmcp charts/vmcp -f charts/vmcp/ci/full-values.yaml > "$out/full.yaml"
"$helm" template vmcp charts/vmcp "${sidecar[@]}" > "$out/sidecar.yaml"
"$helm" template vmcp charts/vmcp -f charts/vmcp/ci/sidecar-values.yaml > "$out/sidecar-replicated.yaml"
"$helm" template vmcp charts/vmcp -f charts/vmcp/ci/sentinel-values.yaml > "$out/sentinel.yaml"
"$helm" template vmcp charts/vmcp -f charts/vmcp/ci/cluster-values.yaml > "$out/cluster.yaml"
if err=$("$helm" template vmcp charts/vmcp -f charts/vmcp/ci/cluster-values.yaml --set redis.url=redis://r:6379 2>&1 >/dev/null); then
  echo "two Redis topologies must not render"; exit 1
fi
grep -q "set only one of redis.url" <<<"$err" || { echo "two Redis topologies: unexpected error: $err"; exit 1; }
for mode in "" "${sidecar[*]}"; do
  # shellcheck disable=SC2086 # $mode is a list of --set flags
  if err=$("$helm" template vmcp charts/vmcp $mode --set replicaCount=3 2>&1 >/dev/null); then
    echo "several replicas without Redis must not render (${mode:-default mode})"; exit 1
  fi
  grep -q "more than one replica (or autoscaling) needs Redis" <<<"$err" \
    || { echo "several replicas without Redis: unexpected error: $err"; exit 1; }
done
if "$helm" template vmcp charts/vmcp --set sidecar.enabled=true >/dev/null 2>&1; then
  echo "sidecar mode without sidecar.image.repository must not render"; exit 1
fi
vmcp_bin="${CARGO_TARGET_DIR:-target}/debug/vmcp"
[ -x "$vmcp_bin" ] || cargo build --locked --quiet --bin vmcp
for f in "$out/default.yaml" "$out/full.yaml" "$out/sidecar.yaml" "$out/sidecar-replicated.yaml" "$out/sentinel.yaml" "$out/cluster.yaml" manifests/*.yaml; do
  case "$(basename "$f")" in
    full.yaml | vmcp-replicated.yaml | sentinel.yaml | cluster.yaml) flags=(--replicated) ;;
    sidecar.yaml) flags=(--sidecar "$([ "$f" = manifests/sidecar.yaml ] && echo everything || echo server)") ;;
    sidecar-replicated.yaml) flags=(--sidecar "$([ "$f" = manifests/sidecar-replicated.yaml ] && echo server || echo counter)" --replicated) ;;
    *) flags=() ;;
  esac
  "$venv/bin/kubernetes-validate" -k 1.31.0 --strict --quiet "$f"
  "$venv/bin/python" scripts/check_rendered.py "$f" "$vmcp_bin" "${flags[@]}"
done
scripts/render-manifests.sh --check
echo "chart and manifests: ok"
