#!/usr/bin/env bash
# The runs behind docs/benchmarks.md. `agentfleet bench ...` is the same as
# `python -m agentfleet.bench ...` (the sub-app is mounted on the main CLI).
# Usage: benchmarks/run_all.sh [OUTDIR]   (default benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results}
B="$PY -m agentfleet.bench"
mkdir -p "$OUT"

# the origin's three tables, latency 1 s
$B http --scenario single      --out "$OUT/http-single"
$B http --scenario ten-agents  --out "$OUT/http-ten-agents"
$B http --scenario fifty-evals --out "$OUT/http-fifty-evals"
# N = 10, 50, 200, 1000 (blocking capped at 30 s and extrapolated) + plot
$B http --sweep --sweep-ns 10,50,200,1000 --max-seconds 30 --out "$OUT/http-sweep"
# latency 10 s: the burst overhead is a fixed cost
$B http --sweep --sweep-ns 200,1000 --latency 10 --patterns agentfleet,per-call,threads \
  --out "$OUT/http-latency10"
$B http --n 1000 --latency 10 --patterns agentfleet,per-call,threads \
  --out "$OUT/http-latency10-repeat"
# ten sequential evaluations per agent
$B http --n 100 --rounds 10 --max-seconds 30 --out "$OUT/http-rounds10"
# three repeats of N = 200 and 1000 (noise on a shared 2-core machine)
for i in 1 2 3; do
  $B http --sweep --sweep-ns 200,1000 --patterns agentfleet,per-call,threads \
    --out "$OUT/http-repeat-$i"
done
# sandbox: 100 concurrent `sleep 1`, round trip of `true`, unconfined and under bwrap
$B sandbox --n 100 --seq 200 --confine no,yes --out "$OUT/sandbox"
$B sandbox --n 100 --seq 200 --confine no --out "$OUT/sandbox-rerun"
# (from here on the sandbox bench also times the null sandbox server: the HTTP hop alone)
$B sandbox --n 100 --seq 200 --confine no --out "$OUT/sandbox-with-null"
# the sandbox server's event loop: uvicorn's default (uvloop when installed) vs asyncio
for i in 1 2; do for lp in auto asyncio; do
  $B sandbox --n 100 --seq 200 --confine no --server-loop $lp --no-null \
    --out "$OUT/sandbox-loop-$lp-$i"
done; done
# fleets: 200 x 10 x 0.5 s and 1000 x 10 x 0.5 s, agentfleet vs thread-per-agent (W=N, W=16)
# on the real sandbox server (under bwrap, the default when it works; and unconfined) and
# on the null sandbox server (execs spawn nothing: the runner's own plumbing)
$B fleet --n 200 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox process,null --out "$OUT/fleet-200"
$B fleet --n 200 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox process --confine no --out "$OUT/fleet-200-unconfined"
$B fleet --n 1000 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox process,null --confine no --out "$OUT/fleet-1000"
# the null-server runs again (the first ones ran under heavy load)
$B fleet --n 200 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox null --out "$OUT/fleet-200-null-rerun"
$B fleet --n 1000 --steps 10 --delay 0.5 --runners agentfleet \
  --sandbox null --out "$OUT/fleet-1000-null-rerun"
# the fleet on the real sandbox server, uvloop vs asyncio in the server
for lp in asyncio auto; do
  $B fleet --n 200 --steps 10 --delay 0.5 --runners agentfleet --sandbox process --confine no \
    --server-loop $lp --out "$OUT/fleet-200-loop-$lp"
done
for lp in asyncio auto; do
  $B fleet --n 1000 --steps 10 --delay 0.5 --runners agentfleet --sandbox process --confine no \
    --server-loop $lp --out "$OUT/fleet-1000-loop-$lp"
done
