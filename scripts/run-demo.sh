#!/usr/bin/env bash
# Runs vmcp on examples/demo.yaml: one replica, two stdio backends
# (@modelcontextprotocol/server-everything via npx), in-memory sessions, no Redis.
# Installs Node.js/npm with apt if they are missing. MCP endpoint: http://127.0.0.1:8080/mcp
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npx >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
exec cargo run --release --locked -- serve --config "${1:-examples/demo.yaml}"
