#!/usr/bin/env bash
# Renders manifests/ from the Helm chart, for users without Helm.
# `--check` renders to a temporary folder and fails if manifests/ is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
out=manifests
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); fi
header() { printf '# Rendered from charts/vmcp by scripts/render-manifests.sh; do not edit.\n# %s\n' "$1"; }
common=(--namespace vmcp --set existingSecret=vmcp-secrets)
{
  header "One replica, in-memory sessions: kubectl create namespace vmcp && kubectl apply -n vmcp -f secret-example.yaml -f vmcp-single.yaml"
  "$helm" template vmcp charts/vmcp "${common[@]}"
} > "$out/vmcp-single.yaml"
{
  header "Three replicas sharing sessions through your Redis (edit the URL): kubectl apply -n vmcp -f secret-example.yaml -f vmcp-replicated.yaml"
  "$helm" template vmcp charts/vmcp "${common[@]}" --set replicaCount=3 \
    --set 'redis.url=redis://:${REDIS_PASSWORD}@redis.vmcp.svc:6379/0'
} > "$out/vmcp-replicated.yaml"
if [ "${1:-}" = "--check" ]; then
  for f in vmcp-single.yaml vmcp-replicated.yaml; do
    diff -u "manifests/$f" "$out/$f" || { echo "manifests/$f is stale: run scripts/render-manifests.sh"; exit 1; }
  done
  echo "manifests/ is up to date"
fi
