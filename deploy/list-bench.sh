#!/usr/bin/env bash
# Listing a large fleet (BENCHMARKS.md, "Listing 100,000 puppets"): checks
# that `geppetto puppets list` pages through N enrolled puppets and prints
# each exactly once, and measures what it costs.
#
# Starts a throwaway release puppeteer (sled data dir in a temporary
# directory, a free loopback port, its own CA and admin token), creates one
# auto-approved enrollment token with N uses, enrolls N simulated puppets
# with `puppet simulate` in batches of at most 10,000 (prefixes b00, b01...;
# each batch is stopped with SIGTERM once its last puppet holds a poll, so
# its first poll with facts was stored, before the next starts: one process
# of 10,000 connections fits the 20,000 open files of a small box, two do
# not), then measures with /usr/bin/time -v (wall time, max RSS):
#   - `geppetto puppets list -o json` (checked: N entries, no duplicate name,
#     exactly the names enrolled) and `geppetto puppets list` (the table,
#     checked the same way);
#   - `geppetto status` (which pages through every puppet too);
# and the puppeteer's VmRSS before and after each, its peak (VmHWM), its
# CPU time per listing, and the size of its data dir.
#
#   deploy/list-bench.sh                       # 100,000 puppets (about 8 min after the build)
#   deploy/list-bench.sh --puppets 2000        # a quick run (under a minute)
#   BIN=/path/to/release deploy/list-bench.sh  # with binaries already built
#
# Flags: --puppets N (default 100000), --batch N (puppets per simulator,
# at most 10000, the default), --enroll-concurrency N (the simulator's,
# default 32). GEPPETTO_BENCH_KEEP=1 keeps the work dir (data dir, logs,
# listings). Every simulated puppet comes from 127.0.0.1, so the puppeteer
# runs without a bound on the connections of one address (as behind a load
# balancer), but keeps its bound on unproven ones (256 by default): polls it
# refuses while a batch connects are retried by the simulator, and counted
# on the batch's line ("poll errors"). RUST_LOG=warn for both. Prints one
# LIST-BENCH line per step.
set -euo pipefail
cd "$(dirname "$0")/.."

N=100000
BATCH=10000
CONCURRENCY=32
while [ $# -gt 0 ]; do
    case $1 in
        --puppets) N=$2; shift 2 ;;
        --batch) BATCH=$2; shift 2 ;;
        --enroll-concurrency) CONCURRENCY=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$BATCH" -gt 10000 ] || [ "$BATCH" -lt 1 ] || [ "$N" -lt 1 ]; then
    echo "--batch must be 1 to 10000 and --puppets at least 1" >&2
    exit 2
fi
if [ -z "${BIN:-}" ]; then
    cargo build --release -p puppeteer --bin puppeteer -p puppet --bin puppet \
        -p geppetto-cli --bin geppetto >&2
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
BIN=$(cd "$BIN" && pwd)
G=$BIN/geppetto

WORK=$(mktemp -d "${TMPDIR:-/tmp}/geppetto-list-bench.XXXXXX")
SIM_PID=""
SERVER_PID=""
cleanup() {
    set +e
    [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null
    wait 2>/dev/null
    if [ -n "${GEPPETTO_BENCH_KEEP:-}" ] && [ "$GEPPETTO_BENCH_KEEP" != 0 ]; then
        echo "LIST-BENCH work dir kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" -v d="${2:-1}" 'BEGIN { printf "%.*f", d, b - a }'; }
say() { echo "LIST-BENCH $*"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }   # kB
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }   # kB
cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }        # ticks
HZ=$(getconf CLK_TCK)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
alive() { kill -0 "$1" 2>/dev/null; }

say "$(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (work tree modified)'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), open files $(ulimit -n)/$(ulimit -Hn), N=$N, batch $BATCH"

# The puppeteer, on a port the kernel picks.
RUST_LOG=warn "$BIN/puppeteer" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 \
    --max-connections-per-address 0 >"$WORK/puppeteer.out" 2>"$WORK/puppeteer.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do
    grep -q "puppeteer listening on https://" "$WORK/puppeteer.out" 2>/dev/null && break
    alive "$SERVER_PID" || { cat "$WORK/puppeteer.out" "$WORK/puppeteer.log" >&2; exit 1; }
    sleep 0.1
done
URL=$(grep -o 'puppeteer listening on https://[^ ]*' "$WORK/puppeteer.out" | head -1 | sed 's/.* //')
[ -n "$URL" ] || { echo "the puppeteer did not say where it listens" >&2; exit 1; }
export GEPPETTO_SERVER=$URL GEPPETTO_CA=$WORK/data/tls/ca.pem GEPPETTO_TOKEN_FILE=$WORK/data/admin-token
say "puppeteer pid $SERVER_PID at $URL, RSS $(mib "$(rss)") MiB"

# One token for the whole fleet, through the environment (not on a command line).
PUPPET_ENROLL_TOKEN=$("$G" enroll-tokens create --uses "$N" --expires 24h --auto-approve \
    --labels bench=list --description "list-bench: $N simulated puppets" 2>>"$WORK/geppetto.err" | tail -1)
export PUPPET_ENROLL_TOKEN

# Enrollment, one simulator at a time.
wait_line() { # FILE PATTERN TIMEOUT_SECS PID: waits for a line of FILE matching PATTERN
    local t=0
    until grep -q "$2" "$1" 2>/dev/null; do
        alive "$4" || { echo "the simulator exited early:" >&2; tail -20 "$1" "${1%.out}.err" >&2; exit 1; }
        [ "$t" -lt $(($3 * 10)) ] || { echo "no '$2' in $1 after $3 s" >&2; tail -20 "$1" "${1%.out}.err" >&2; exit 1; }
        sleep 0.1
        t=$((t + 1))
    done
}
enroll_total=0
enrolled=0
batches=0
b=0
while [ "$enrolled" -lt "$N" ]; do
    count=$((N - enrolled < BATCH ? N - enrolled : BATCH))
    prefix=$(printf 'b%02d' "$b")
    out=$WORK/sim-$prefix.out
    started=$(now)
    RUST_LOG=warn "$BIN/puppet" simulate --count "$count" --server "$URL" --ca "$GEPPETTO_CA" \
        --state-dir "$WORK/sim/$prefix" --name-prefix "$prefix" --labels "batch=$prefix,site=lab" \
        --enroll-concurrency "$CONCURRENCY" >"$out" 2>"${out%.out}.err" &
    SIM_PID=$!
    wait_line "$out" "puppets ready" 1800 "$SIM_PID"
    ready=$(since "$started")
    enroll_s=$(sed -n 's/.*puppets ready .* in \([0-9.]*\)s.*/\1/p' "$out")
    wait_line "$out" "puppets polling after" 600 "$SIM_PID"
    # The last puppet started polling last: once its poll is held, the
    # batch's first polls (with their facts) were received.
    last=$(printf '%s-%05d' "$prefix" $((count - 1)))
    for _ in $(seq 1 600); do
        "$G" puppets show "$last" -o json 2>/dev/null | grep -q '"polling": *true' && break
        sleep 0.5
    done
    polling=$(since "$started")
    kill -TERM "$SIM_PID"
    wait "$SIM_PID" || true
    SIM_PID=""
    errors=$(sed -n 's/.*stopped; .* \([0-9][0-9]*\) poll errors.*/\1/p' "$out")
    say "batch $prefix: $count puppets enrolled in $enroll_s s ($(awk -v n="$count" -v s="$enroll_s" 'BEGIN { printf "%.0f", n / s }')/s; ready after ${ready} s of wall time), last one polling after $polling s; ${errors:-?} poll errors; puppeteer RSS $(mib "$(rss)") MiB"
    if [ "${errors:-0}" != 0 ]; then
        say "batch $prefix: first poll error: $(grep -m1 'poll failed' "$out" || true)"
    fi
    enroll_total=$(awk -v a="$enroll_total" -v s="$enroll_s" 'BEGIN { print a + s }')
    enrolled=$((enrolled + count))
    b=$((b + 1))
    batches=$b
done
rate=$(awk -v n="$N" -v s="$enroll_total" 'BEGIN { printf "%.0f", n / s }')
say "enrolled $N puppets in $batches batches: $enroll_total s of enrollment in all, $rate/s"

# The names expected, one a line, sorted.
b=0
left=$N
while [ "$left" -gt 0 ]; do
    count=$((left < BATCH ? left : BATCH))
    seq -f "$(printf 'b%02d' "$b")-%05g" 0 $((count - 1))
    left=$((left - count))
    b=$((b + 1))
done | LC_ALL=C sort >"$WORK/expected.txt"

sleep 2
timed() { # NAME COMMAND...: runs it under /usr/bin/time -v, stdout to $WORK/NAME.stdout
    local name=$1 r0 c0 t0 code=0
    shift
    r0=$(rss)
    c0=$(cpu)
    t0=$(now)
    /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" || code=$?
    local wall max
    wall=$(since "$t0" 2)
    max=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
    say "$name: exit $code, wall ${wall} s, max RSS $(mib "$max") MiB," \
        "user $(awk -F': ' '/User time/ {print $2}' "$WORK/$name.time") s, sys $(awk -F': ' '/System time/ {print $2}' "$WORK/$name.time") s;" \
        "stdout $(wc -c <"$WORK/$name.stdout") bytes; puppeteer RSS $(mib "$r0") -> $(mib "$(rss)") MiB," \
        "CPU $(awk -v c="$(( $(cpu) - c0 ))" -v hz="$HZ" 'BEGIN { printf "%.2f", c / hz }') s"
    if [ -s "$WORK/$name.stderr" ]; then
        say "$name stderr: $(head -c 2000 "$WORK/$name.stderr")"
    fi
}
check() { # NAME FILE-OF-NAMES: N names, no duplicates, exactly the expected ones
    local names=$1 total unique
    total=$(wc -l <"$names")
    unique=$(LC_ALL=C sort -u "$names" | wc -l)
    if LC_ALL=C sort "$names" | cmp -s - "$WORK/expected.txt"; then
        say "$2: $total entries, $unique distinct names, expected $N: CORRECT"
    else
        say "$2: $total entries, $unique distinct names, expected $N: WRONG" \
            "($(LC_ALL=C sort -u "$names" | comm -13 - "$WORK/expected.txt" | wc -l) missing," \
            "$((total - unique)) duplicates)"
        LC_ALL=C sort "$names" | uniq -d | head -5 | sed 's/^/LIST-BENCH   duplicate: /'
        LC_ALL=C sort -u "$names" | comm -13 - "$WORK/expected.txt" | head -5 | sed 's/^/LIST-BENCH   missing: /'
    fi
}

say "puppeteer before the listings: RSS $(mib "$(rss)") MiB, peak so far $(mib "$(hwm)") MiB"
timed list-json "$G" puppets list -o json
jq -r '.[].name' "$WORK/list-json.stdout" >"$WORK/list-json.names" || true
check "$WORK/list-json.names" "puppets list -o json"
say "puppets list -o json: $(jq '[.[] | select(.facts != null and .facts.os_id != null and .facts.os_id != "")] | length' "$WORK/list-json.stdout" 2>/dev/null || echo '?') entries with facts"

# Once more: the first listing read the records from disk into sled's cache.
timed list-json-again "$G" puppets list -o json
jq -r '.[].name' "$WORK/list-json-again.stdout" >"$WORK/list-json-again.names" || true
check "$WORK/list-json-again.names" "puppets list -o json, again"

timed list-table "$G" puppets list
# The table: one header line, then one row a puppet, its name first.
tail -n +2 "$WORK/list-table.stdout" | awk '{print $1}' >"$WORK/list-table.names"
check "$WORK/list-table.names" "puppets list (table)"

timed status "$G" status
say "status says: $(head -1 "$WORK/status.stdout")"
timed status-json "$G" status -o json
say "status -o json: fleet total $(jq '.fleet.total' "$WORK/status-json.stdout" 2>/dev/null || echo '?') (expected $N)"

say "puppeteer after the listings: RSS $(mib "$(rss)") MiB, peak $(mib "$(hwm)") MiB"
say "data dir: $(du -sh "$WORK/data" | cut -f1) ($(du -sb "$WORK/data" | cut -f1) bytes; db $(du -sb "$WORK/data/db" 2>/dev/null | cut -f1) bytes)"
if grep -qiE 'error|panic' "$WORK/puppeteer.log"; then
    say "puppeteer log: $(grep -ciE 'error|panic' "$WORK/puppeteer.log") lines with error/panic, first:"
    grep -iE 'error|panic' "$WORK/puppeteer.log" | head -5 | sed 's/^/LIST-BENCH   /'
fi
