#!/usr/bin/env bash
# The dispatch grid of docs/BENCHMARKS.md: 100, 1,000 and 5,000 connected agents at 5, 20
# and 100 escalations a second, each run on a fresh database, then the plot.
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 bench/dispatch_grid.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"  # 5,000 sockets need more descriptors than the usual 1,024
out=${OUT:-var/bench/dispatch-grid.jsonl}
mkdir -p "$(dirname "$out")"
: > "$out"
for agents in ${AGENTS:-100 1000 5000}; do
    for rate in ${RATES:-5 20 100}; do
        echo "== $agents agents, $rate/s"
        .venv/bin/python bench/dispatch_latency.py --agents "$agents" --rate "$rate" \
            --duration "${DURATION:-20}" --warmup "${WARMUP:-5}" --out "$out"
    done
done
.venv/bin/python bench/plot_dispatch.py "$out" docs/img/dispatch-latency.png
