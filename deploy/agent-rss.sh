#!/usr/bin/env bash
# Idle memory of a real `puppet run` agent (BENCHMARKS.md, "Agent memory";
# issue 6's target: under 15 MiB while idle). Starts a release puppeteer on
# a fresh data dir and one release puppet enrolled to it, on loopback, and
# prints the puppet's VmRSS (with its anonymous and file-backed parts), PSS
# and thread count after IDLE seconds of idling, then again after it ran one
# job (`echo hi`) and idled IDLE seconds more, and after a job printing
# 20 MiB and IDLE seconds more.
#
#   deploy/agent-rss.sh                 # builds the release binaries first
#   BIN=target/release IDLE=60 deploy/agent-rss.sh
#
# Extra environment for the puppet only: PUPPET_ENV (e.g.
# PUPPET_ENV="MALLOC_ARENA_MAX=2"). Everything runs in a temporary
# directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-60}
if [ -z "${BIN:-}" ]; then
    cargo build --release --locked --bins >&2
    BIN=${CARGO_TARGET_DIR:-target}/release
fi
WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/puppeteer" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 >"$WORK/puppeteer.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    grep -q "listening on" "$WORK/puppeteer.log" && break
    sleep 0.1
done
url=$(grep -o 'https://[^ ]*' "$WORK/puppeteer.log" | head -1)
export GEPPETTO_SERVER=$url GEPPETTO_CA=$WORK/data/tls/ca.pem GEPPETTO_TOKEN_FILE=$WORK/data/admin-token
G=$BIN/geppetto
secret=$("$G" enroll-tokens create --uses 1 --expires 10m --auto-approve 2>/dev/null)
# shellcheck disable=SC2086
env ${PUPPET_ENV:-} RUST_LOG=warn "$BIN/puppet" run --server "$url" --ca "$GEPPETTO_CA" \
    --enroll-token "$secret" --state-dir "$WORK/puppet" --name rss >"$WORK/puppet.log" 2>&1 &
puppet=$!
pids+=("$puppet")
for _ in $(seq 1 300); do
    "$G" puppets show rss -o json 2>/dev/null | grep -q '"polling": *true' && break
    sleep 0.1
done

report() {
    local when=$1 status smaps
    status=/proc/$puppet/status
    smaps=/proc/$puppet/smaps_rollup
    printf 'AGENT-RSS %-28s VmRSS %6s KiB (anon %s, file %s) PSS %s KiB, %s threads\n' "$when" \
        "$(awk '/^VmRSS/ {print $2}' "$status")" \
        "$(awk '/^RssAnon/ {print $2}' "$status")" \
        "$(awk '/^RssFile/ {print $2}' "$status")" \
        "$(awk '/^Pss:/ {print $2}' "$smaps")" \
        "$(awk '/^Threads/ {print $2}' "$status")"
}

echo "AGENT-RSS $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), PUPPET_ENV='${PUPPET_ENV:-}'"
report "enrolled, polling"
sleep "$IDLE"
report "idle ${IDLE} s"
"$G" tasks create hi --command 'echo hi' --timeout 1m >/dev/null
"$G" jobs run hi --puppet rss --wait >/dev/null 2>&1
report "after one job"
sleep "$IDLE"
report "idle ${IDLE} s after the job"
# A run whose output (20 MiB of base64) goes through the spool and the
# compressed upload: what the agent keeps of its peak once idle again.
"$G" tasks create big --command 'head -c 15728640 /dev/urandom | base64' --timeout 5m >/dev/null
"$G" jobs run big --puppet rss --wait >/dev/null 2>&1
report "after a 20 MiB log"
sleep "$IDLE"
report "idle ${IDLE} s after the 20 MiB log"
