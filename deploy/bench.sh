#!/bin/sh
# The fleet benchmark (BENCHMARKS.md, "Fleet scale"): builds the release
# binaries, then starts a real puppeteer pinned to CPU 0, `puppet simulate`
# fleets and real `puppet run` agents pinned to CPU 1, and measures dispatch
# latency, fan-out, throughput, cost and storage.
#
#   deploy/bench.sh                      # 1, 100, 1000, 10000 puppets (about 25 min)
#   deploy/bench.sh --sizes 1,100        # only these fleet sizes
#   deploy/bench.sh --quick              # a tiny smoke run (under a minute)
#   deploy/bench.sh --cluster 3 10000    # a cluster: 3 nodes on PostgreSQL,
#                                        # 10,000 puppets (deploy/cluster-bench.sh)
#
# Other flags: --dispatch-jobs N, --hold SECS (the poll hold the fleet asks
# for; default 300), --idle-window SECS, --storage-runs N, --storage-fleet N,
# --real-agents 1,10,20, --out DIR. GEPPETTO_BENCH_KEEP=1 keeps the work dir
# (data dirs, puppeteer and simulator logs). Prints a table; writes
# target/bench/results.json (or DIR/results.json).
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = --cluster ]; then
    shift
    exec deploy/cluster-bench.sh "$@"
fi
cargo build --release -p puppet --bin puppet -p puppeteer --bin puppeteer
exec cargo bench -p puppeteer --bench fleet -- "$@"
