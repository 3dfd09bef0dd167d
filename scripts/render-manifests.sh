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
{
  header "Sidecar mode, one replica: vmcp in front of @modelcontextprotocol/server-everything in the same pod, on localhost: kubectl apply -n vmcp -f secret-example.yaml -f sidecar.yaml"
  "$helm" template vmcp charts/vmcp "${common[@]}" --set sidecar.enabled=true --set sidecar.name=everything \
    --set sidecar.image.repository=node --set sidecar.image.tag=22-alpine --set sidecar.port=3001 \
    --set-json 'sidecar.command=["npx","-y","@modelcontextprotocol/server-everything","streamableHttp"]' \
    --set-json 'sidecar.env=[{"name":"PORT","value":"3001"},{"name":"HOME","value":"/tmp"},{"name":"npm_config_cache","value":"/tmp/.npm"}]'
} > "$out/sidecar.yaml"
{
  header "Sidecar mode, three replicas: your stateful MCP server (REPLACE the placeholder image ghcr.io/example/stateful-mcp-server:1.0; it must serve Streamable HTTP on 0.0.0.0:3000/mcp) next to vmcp in every pod, sessions pinned to the pod holding their state, shared through your Redis (edit the URL): kubectl apply -n vmcp -f secret-example.yaml -f sidecar-replicated.yaml"
  "$helm" template vmcp charts/vmcp "${common[@]}" --set replicaCount=3 \
    --set 'redis.url=redis://:${REDIS_PASSWORD}@redis.vmcp.svc:6379/0' \
    --set sidecar.enabled=true --set sidecar.image.repository=ghcr.io/example/stateful-mcp-server \
    --set sidecar.image.tag=1.0
} > "$out/sidecar-replicated.yaml"
if [ "${1:-}" = "--check" ]; then
  for f in vmcp-single.yaml vmcp-replicated.yaml sidecar.yaml sidecar-replicated.yaml; do
    diff -u "manifests/$f" "$out/$f" || { echo "manifests/$f is stale: run scripts/render-manifests.sh"; exit 1; }
  done
  echo "manifests/ is up to date"
fi
