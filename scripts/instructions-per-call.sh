#!/usr/bin/env bash
# User-space instructions per `tools/call` of one process, counted by
# valgrind's callgrind: unlike CPU time on shared cores, the same build and
# load give nearly the same count run after run (about 1% apart), so a change
# of a few percent shows.
#
#   scripts/instructions-per-call.sh [owner|forwarder|stateless|bare|floor|guarded] [sessions]
#
# owner: vmcp entered at the session's owner; forwarder: the vmcp replica that
# forwards to it; stateless: one replica driven by 2026-07-28 clients (each
# caller's pooled backend session); bare: the bare hyper hop (the reference);
# floor / guarded: the minimal MCP hop without / with vmcp's per-call
# guarantees (see the README's floor rows). Runs `cargo bench --bench load -- --soak` with that
# process under callgrind (about 50x slower), zeroes the counters after
# warm-up, counts 10 s, and divides by the calls it answered (half its
# `writev` calls: one for the request onward, one for the answer). The
# profile stays in target/callgrind/ for `callgrind_annotate`. Caveats:
# valgrind's CPU has no SHA extensions, so a hop's HMAC runs in software
# (cheap on hardware with SHA-NI), and a large `rep movsb` memcpy counts
# about one instruction per byte.
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:-owner}
sessions=${2:-16}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
out="$PWD/target/callgrind"
mkdir -p "$out"
rm -f "$out"/cg.*
cargo bench --bench load --no-run >/dev/null 2>&1
under="valgrind --tool=callgrind --callgrind-out-file=$out/cg.%p.out"
cat >"$out/vmcp" <<WRAP
#!/bin/sh
exec $under $PWD/target/release/vmcp "\$@"
WRAP
cat >"$out/hop" <<WRAP
#!/bin/sh
exec $under "\$@"
WRAP
chmod +x "$out/vmcp" "$out/hop"
case "$role" in
  owner) env=(VMCP_BIN="$out/vmcp"); flags=() ;;
  forwarder) env=(VMCP_BIN="$out/vmcp"); flags=(--forward) ;;
  stateless) env=(VMCP_BIN="$out/vmcp"); flags=(--stateless) ;;
  bare) env=(VMCP_BENCH_HOP_WRAP="$out/hop"); flags=(--bare) ;;
  floor) env=(VMCP_BENCH_HOP_WRAP="$out/hop"); flags=(--floor) ;;
  guarded) env=(VMCP_BENCH_HOP_WRAP="$out/hop"); flags=(--floor --guarded) ;;
  *) echo "role: owner, forwarder, stateless, bare, floor or guarded" >&2; exit 2 ;;
esac
log="$out/soak.log"
env "${env[@]}" cargo bench --bench load -- --soak 25 --sessions "$sessions" "${flags[@]}" >"$log" 2>&1 &
soak=$!
for _ in $(seq 1 120); do grep -q "gateway pid" "$log" && break; sleep 1; done
gateway=$(grep -o "gateway pid [0-9]*" "$log" | grep -o "[0-9]*")
sleep 4
callgrind_control -z "$gateway" >/dev/null
sleep 10
callgrind_control -d "$gateway" >/dev/null
sleep 2
profile=$(ls -S "$out"/cg."$gateway".out* | head -1)
total=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
# Calls answered: half the calls of libc's `writev`. Every process measured
# here writes each call twice, the request onward and the answer back, one
# `writev` each (2.000 per call where hyper's own encoder could still be
# counted; with LTO it is inlined). libc is never inlined.
writes=$(callgrind_annotate --inclusive=yes --threshold=100 --tree=caller "$profile" 2>/dev/null | awk '
  /^ *[0-9,]+ .*< / { callers[k++] = $0 }
  /^ *$/ { k = 0 }
  /\* .*:(__)?writev / {
    for (i = 0; i < k; i++) if (match(callers[i], /\(([0-9,]+)x\)/)) { c = substr(callers[i], RSTART + 1, RLENGTH - 3); gsub(",", "", c); sum += c }
  }
  END { print sum + 0 }')
n=$((writes / 2))
[ "$n" -gt 0 ] || { echo "no writev counted in $profile" >&2; exit 1; }
echo "$role, $sessions sessions: $n calls, $total instructions, $((total / n)) per call (profile: $profile)"
wait "$soak" || true
