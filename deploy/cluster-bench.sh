#!/bin/sh
# The cluster benchmark (BENCHMARKS.md, "Cluster"): a throwaway PostgreSQL
# (fsync on, the default), NODES puppeteers on it, COUNT simulated puppets
# spread over the nodes (`puppet simulate`, one process per node, each with
# that node's URL first), then:
#   - the time until every puppet polls;
#   - a fan-out: one job on every puppet, created through node 0, until it
#     succeeded; PostgreSQL commits per second meanwhile;
#   - idle CPU of the nodes and of PostgreSQL over 60 s;
#   - failover: the leader killed with kill -9, the time until another leads.
#
#   deploy/cluster-bench.sh [NODES] [COUNT]     # default: 2 nodes, 5000 puppets
#
# Needs PostgreSQL's programs (initdb, postgres, psql) and root or a user
# that may run them; builds the release binaries first. Prints the figures.
set -eu
NODES=${1:-2}
COUNT=${2:-5000}
cd "$(dirname "$0")/.."
cargo build --release -q -p puppet --bin puppet -p puppeteer --bin puppeteer -p geppetto-cli --bin geppetto
BIN=$PWD/target/release
PGBIN=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
PSQL=$(command -v psql || echo "$PGBIN/psql")
WORK=$(mktemp -d)
chmod 755 "$WORK"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; else "$@"; fi; }
cleanup() {
    for p in $(cat "$WORK"/*.pid 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${GEPPETTO_BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

PGPORT=$(free_port)
mkdir "$WORK/pg" && [ "$(id -u)" != 0 ] || chown nobody "$WORK/pg"
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U geppetto --auth=trust -E UTF8 --locale=C >/dev/null
as_pg "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PGPORT" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
    -c max_connections=200 >"$WORK/pg.log" 2>&1 &
echo $! >"$WORK/pg.pid"
until "$PSQL" -h 127.0.0.1 -p "$PGPORT" -U geppetto -d postgres -c 'select 1' >/dev/null 2>&1; do sleep 0.2; done
"$PSQL" -q -h 127.0.0.1 -p "$PGPORT" -U geppetto -d postgres -c 'CREATE DATABASE geppetto'
STORE="postgres://geppetto@127.0.0.1:$PGPORT/geppetto"
sql() { "$PSQL" -At -h 127.0.0.1 -p "$PGPORT" -U geppetto -d geppetto -c "$1"; }

URLS=""
i=0
while [ $i -lt "$NODES" ]; do
    port=$(free_port)
    # Every simulated puppet comes from 127.0.0.1: no per-address bound
    # (as behind a load balancer, deploy/README.md).
    "$BIN/puppeteer" serve --store "$STORE" --data-dir "$WORK/node$i" --listen "127.0.0.1:$port" \
        --max-connections-per-address 0 --max-unauthenticated-per-address 0 \
        >"$WORK/node$i.out" 2>"$WORK/node$i.log" &
    echo $! >"$WORK/node$i.pid"
    until grep -q "puppeteer listening" "$WORK/node$i.out" 2>/dev/null; do sleep 0.2; done
    URLS="$URLS https://localhost:$port"
    i=$((i + 1))
done
export GEPPETTO_CA="$WORK/node0/tls/ca.pem" GEPPETTO_TOKEN
GEPPETTO_TOKEN=$(cat "$WORK/node0/admin-token")
ALL=$(echo $URLS | tr ' ' ',')
export GEPPETTO_SERVER="$ALL"
G="$BIN/geppetto"
TOKEN=$($G enroll-tokens create --auto-approve | tail -1)

now() { date +%s.%N; }
start=$(now)
i=0
per=$((COUNT / NODES))
for url in $URLS; do
    rest=$(echo "$ALL" | tr ',' '\n' | grep -v "^$url$" | paste -sd, -)
    "$BIN/puppet" simulate --count "$per" --server "$url${rest:+,$rest}" --ca "$GEPPETTO_CA" \
        --enroll-token "$TOKEN" --labels bench=1 --state-dir "$WORK/sim$i" --name-prefix "n$i" >"$WORK/sim$i.log" 2>&1 &
    echo $! >"$WORK/sim$i.pid"
    i=$((i + 1))
done
total=$((per * NODES))
online() { $G status -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["fleet"]["online"])' 2>/dev/null || echo 0; }
while [ "$(online)" -lt "$total" ]; do
    sleep 1
done
echo "connect: $total puppets online through $NODES nodes in $(echo "$(now) - $start" | bc) s"

$G tasks create hello --command "echo hello" >/dev/null
commits() { sql "SELECT xact_commit FROM pg_stat_database WHERE datname = 'geppetto'"; }
c0=$(commits)
start=$(now)
$G jobs run hello --target bench=1 --wait >/dev/null
took=$(echo "$(now) - $start" | bc)
c1=$(commits)
echo "fan-out: one job on $total puppets, succeeded in $took s; PostgreSQL: $((c1 - c0)) commits, $(echo "($c1 - $c0) / $took" | bc) per s"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pids=""
for f in "$WORK"/node*.pid; do pids="$pids $(cat "$f")"; done
postmaster=$(head -1 "$WORK/pg/data/postmaster.pid")
pgpids="$postmaster $(pgrep -P "$postmaster" | tr '\n' ' ')"
sum() { t=0; for p in $1; do t=$((t + $(cpu "$p" 2>/dev/null || echo 0))); done; echo $t; }
n0=$(sum "$pids")
p0=$(sum "$pgpids")
sleep 60
n1=$(sum "$pids")
p1=$(sum "$pgpids")
hz=$(getconf CLK_TCK)
echo "idle: nodes $(echo "scale=1; ($n1 - $n0) * 100 / $hz / 60" | bc)% of a core, PostgreSQL $(echo "scale=1; ($p1 - $p0) * 100 / $hz / 60" | bc)% (all $NODES nodes together, 60 s)"
for f in "$WORK"/node*.pid; do
    echo "node $(basename "$f" .pid): RSS $(awk '/VmRSS/ {print $2}' "/proc/$(cat "$f")/status") kB"
done

leader=$($G status -o json | python3 -c 'import json,sys; print([n["listen"] for n in json.load(sys.stdin)["server"]["nodes"] if n["leader"]][0])')
for f in "$WORK"/node*.out; do
    if grep -q "${leader##*:}" "$f"; then victim=$(cat "${f%.out}.pid"); fi
done
start=$(now)
kill -9 "$victim"
until $G status -o json 2>/dev/null | python3 -c 'import json,sys; n=[n for n in json.load(sys.stdin)["server"]["nodes"] if n["leader"] and n["listen"] != sys.argv[1]]; sys.exit(0 if n else 1)' "$leader"; do
    sleep 0.5
done
echo "failover: the leader killed, another leads after $(echo "$(now) - $start" | bc) s"
