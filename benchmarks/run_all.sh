#!/usr/bin/env bash
# The runs behind docs/benchmarks.md. `agentfleet bench ...` is the same as
# `python -m agentfleet.bench ...` (the sub-app is mounted on the main CLI).
# Usage: benchmarks/run_all.sh [OUTDIR]   (default benchmarks/results; about 100 minutes)
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
# a repeat of N = 200 and 1000 (noise on a shared 2-core machine)
$B http --sweep --sweep-ns 200,1000 --patterns agentfleet,per-call,threads --out "$OUT/http-repeat"
# latency 10 s: the burst overhead is a fixed cost
$B http --sweep --sweep-ns 200,1000 --latency 10 --patterns agentfleet,per-call,threads \
  --out "$OUT/http-latency10"
# ten sequential evaluations per agent
$B http --n 100 --rounds 10 --max-seconds 30 --out "$OUT/http-rounds10"
# sandbox: 100 concurrent `sleep 1`, round trip of `true`: process backend unconfined and
# under bwrap, docker backend (20 containers) next to bare `docker exec` and aiodocker
$B sandbox --backend process,docker --n 100 --docker-n 20 --seq 200 --confine off,required \
  --out "$OUT/sandbox"
# fleets: 200 x 10 x 0.5 s and 1000 x 10 x 0.5 s, agentfleet vs thread-per-agent (W=N, W=16)
# on the real sandbox server (unconfined) and on the null sandbox server (execs spawn
# nothing: the runner's own plumbing)
$B fleet --n 200 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox process,null --confine off --out "$OUT/fleet-200"
$B fleet --n 1000 --steps 10 --delay 0.5 --workers n,16 --max-seconds 30 \
  --sandbox process,null --confine off --out "$OUT/fleet-1000"
$B fleet --n 1000 --steps 10 --delay 0.5 --runners agentfleet \
  --sandbox process,null --confine off --out "$OUT/fleet-1000-agentfleet"
# the same fleet with the sandbox server under bwrap
$B fleet --n 200 --steps 10 --delay 0.5 --runners agentfleet --sandbox process --confine required \
  --out "$OUT/fleet-200-bwrap"
# the Ray backend against the local one (same small fleet of perf-lite tasks)
$B fleet --backend ray --shards 2 --rounds 3 --out "$OUT/fleet-ray"
# evaluation workers: 40 real evaluations with 1 worker, 2 pinned, 2 Ray actors, each
# without and with a CPU hog (about 70 minutes on 2 cores)
$B eval --n 40 --modes 1,2p,2r --hog both --out "$OUT/eval-workers"

# History: the sandbox server's event loop. uvicorn picks uvloop when it is installed;
# these pairs are why agentfleet's servers run on asyncio (kept in results/*-loop-*).
# for i in 1 2; do for lp in auto asyncio; do
#   $B sandbox --n 100 --seq 200 --confine off --server-loop $lp --no-null \
#     --out "$OUT/sandbox-loop-$lp-$i"
# done; done
# for n in 200 1000; do for lp in asyncio auto; do
#   $B fleet --n $n --steps 10 --delay 0.5 --runners agentfleet --sandbox process \
#     --confine off --server-loop $lp --out "$OUT/fleet-$n-loop-$lp"
# done; done
