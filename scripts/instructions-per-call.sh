#!/usr/bin/env bash
# User-space instructions per `tools/call` of one vmcp process, counted by
# valgrind's callgrind: unlike CPU time on shared cores, the same build and
# load give the same count run after run, so a change of a few percent shows.
#
#   scripts/instructions-per-call.sh [owner|forwarder] [sessions]
#
# Runs `cargo bench --bench load -- --soak` with vmcp under callgrind (about
# 50x slower, so it serves a few hundred calls per second), zeroes the counters
# after warm-up, counts 10 s of calls (from the owner's `vmcp_requests_total`),
# and prints instructions per call; the profile is left in target/callgrind/
# for `callgrind_annotate`. Caveats: valgrind's CPU has no SHA extensions, so
# the hop's HMAC runs in software (cheap on real hardware with SHA-NI), and a
# `rep movsb` memcpy counts one instruction per byte or so.
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:-owner}
sessions=${2:-16}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
out="$PWD/target/callgrind"
mkdir -p "$out"
rm -f "$out"/cg.*
cargo bench --bench load --no-run >/dev/null 2>&1
wrapper="$out/vmcp-under-callgrind"
cat >"$wrapper" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$out/cg.%p.out $PWD/target/release/vmcp "\$@"
WRAP
chmod +x "$wrapper"
flags=()
[ "$role" = forwarder ] && flags=(--forward)
log="$out/soak.log"
VMCP_BIN="$wrapper" cargo bench --bench load -- --soak 25 --sessions "$sessions" "${flags[@]}" >"$log" 2>&1 &
soak=$!
for _ in $(seq 1 120); do grep -q "gateway pid" "$log" && break; sleep 1; done
gateway=$(grep -o "gateway pid [0-9]*" "$log" | grep -o "[0-9]*")
counted=$gateway
if [ "$role" = forwarder ]; then counted=$(grep -o "owner pid [0-9]*" "$log" | grep -o "[0-9]*"); fi
port=$(ss -ltnp | grep "pid=$counted," | awk '{print $4}' | head -1)
calls() { curl -s "http://$port/metrics" | awk '/requests_total\{method="tools\/call",status="ok"\}/ {print $2}'; }
sleep 4
callgrind_control -z "$gateway" >/dev/null
before=$(calls)
sleep 10
after=$(calls)
callgrind_control -d "$gateway" >/dev/null
sleep 2
profile=$(ls -S "$out"/cg."$gateway".out* | head -1)
total=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
n=$((after - before))
echo "$role, $sessions sessions: $n calls, $total instructions, $((total / n)) per call (profile: $profile)"
wait "$soak" || true
