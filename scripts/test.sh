#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain:
# installs what the tests need (Node.js + npm, python3-venv, redis-server,
# redis-sentinel (tests/redis_topologies.rs), prometheus (for promtool) and tinyproxy (tests/egress.rs) via apt; server-everything, the OpenID provider
# oidc-provider, and Node 22 with the MCP conformance suite, via npm; the
# Python MCP SDK via pip, all under target/test-deps; helm and
# kubernetes-validate under target/), then runs fmt, clippy, the chart and
# manifest checks, and every test (the conformance suite through vmcp included).
set -euo pipefail
cd "$(dirname "$0")/.."

EVERYTHING_VERSION=2026.8.31
PY_MCP_VERSION=2.3.0
CONFORMANCE_VERSION=0.1.16
TS_SDK_VERSION=1.32.2
NODE22_VERSION=22.23.3
OIDC_PROVIDER_VERSION=9.13.3
deps="$PWD/target/test-deps"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v promtool >/dev/null || missing+=(prometheus)
command -v tinyproxy >/dev/null || missing+=(tinyproxy)
command -v unzip >/dev/null || missing+=(unzip)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$deps"
if [ ! -f "$deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ]; then
  echo "==> npm install @modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
  npm install --prefix "$deps" --no-audit --no-fund --silent "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
fi
# The OpenID provider of the auth tests (tests/support/oidc/provider.mjs imports it from here).
if ! grep -qs "\"version\": \"$OIDC_PROVIDER_VERSION\"" "$deps/node_modules/oidc-provider/package.json"; then
  echo "==> npm install oidc-provider@$OIDC_PROVIDER_VERSION"
  npm install --prefix "$deps" --no-audit --no-fund --silent --save-exact "oidc-provider@$OIDC_PROVIDER_VERSION"
fi
if ! "$deps/venv/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "==> pip install mcp==$PY_MCP_VERSION"
  python3 -m venv "$deps/venv"
  "$deps/venv/bin/pip" install -q "mcp==$PY_MCP_VERSION"
fi
# The MCP conformance suite needs Node 22 (npm's `node` package; the OpenID
# provider runs on it too), and the fixture backend the TypeScript SDK; both live next to the fixture, which is
# copied in so that its imports resolve there.
conformance="$deps/conformance"
if [ ! -f "$conformance/node_modules/@modelcontextprotocol/conformance/package.json" ] \
  || ! grep -q "\"version\": \"$CONFORMANCE_VERSION\"" "$conformance/node_modules/@modelcontextprotocol/conformance/package.json"; then
  echo "==> npm install node@$NODE22_VERSION @modelcontextprotocol/conformance@$CONFORMANCE_VERSION @modelcontextprotocol/sdk@$TS_SDK_VERSION"
  mkdir -p "$conformance"
  npm install --prefix "$conformance" --no-audit --no-fund --silent \
    "node@$NODE22_VERSION" "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" "@modelcontextprotocol/sdk@$TS_SDK_VERSION"
fi
cp tests/conformance/*.mjs "$conformance/"
export VMCP_TEST_DEPS="$deps"

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> Helm chart and manifests"
scripts/check-chart.sh
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
