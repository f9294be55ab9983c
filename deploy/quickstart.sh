#!/usr/bin/env bash
# Geppetto quick start: builds everything, starts a puppeteer on a local data
# dir and one local puppet enrolled to it, runs a sample job and prints its
# output. Both keep running in the background until `deploy/quickstart.sh stop`.
#
#   deploy/quickstart.sh          build, start (or restart) and run the sample job
#   deploy/quickstart.sh stop     stop the puppeteer and the puppet
#
# Everything lives in .quickstart/ (override with GEPPETTO_QUICKSTART_DIR); the
# port is 7443 (override with GEPPETTO_QUICKSTART_PORT).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QS=${GEPPETTO_QUICKSTART_DIR:-$ROOT/.quickstart}
PORT=${GEPPETTO_QUICKSTART_PORT:-7443}
BIN=$ROOT/target/release
PUPPET_NAME=quickstart

stop() {
    for proc in puppet puppeteer; do
        if [ -f "$QS/$proc.pid" ]; then
            pid=$(cat "$QS/$proc.pid")
            if kill "$pid" 2>/dev/null; then
                for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            fi
            rm -f "$QS/$proc.pid"
        fi
    done
}

# Waits up to $2 seconds for the command $1 to succeed.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq 1 $((seconds * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "quickstart: timed out waiting for $what" >&2
    return 1
}

case "${1:-start}" in
stop)
    stop
    echo "Stopped the quickstart puppeteer and puppet (data kept in $QS)."
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac

stop
# Before the build (minutes on a first run): is the port free? (Ours was
# stopped just above.) bash's /dev/tcp connects if anything listens there.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "quickstart: port $PORT is in use by another program; pick another one, e.g." >&2
    echo "  GEPPETTO_QUICKSTART_PORT=7444 $0" >&2
    exit 1
fi
echo "==> Building (cargo build --release)"
(cd "$ROOT" && cargo build --release --locked --bins)
mkdir -p "$QS"

echo "==> Starting the puppeteer on https://localhost:$PORT (data in $QS/puppeteer)"
"$BIN/puppeteer" serve --data-dir "$QS/puppeteer" --listen "127.0.0.1:$PORT" \
    >"$QS/puppeteer.log" 2>&1 &
echo $! >"$QS/puppeteer.pid"
listening() {
    grep -q "listening on" "$QS/puppeteer.log" && return 0
    # Gone already: no point in waiting.
    kill -0 "$(cat "$QS/puppeteer.pid")" 2>/dev/null || return 2
    return 1
}
for _ in $(seq 1 300); do
    status=0
    listening || status=$?
    [ $status -ne 1 ] && break
    sleep 0.1
done
if [ $status -ne 0 ]; then
    echo "quickstart: the puppeteer did not start:" >&2
    tail -5 "$QS/puppeteer.log" >&2
    if grep -q "schema version" "$QS/puppeteer.log"; then
        echo "quickstart: $QS was made by an older version; remove it and run again." >&2
    fi
    rm -f "$QS/puppeteer.pid"
    exit 1
fi

export GEPPETTO_SERVER="https://localhost:$PORT"
export GEPPETTO_CA="$QS/puppeteer/tls/ca.pem"
export GEPPETTO_TOKEN_FILE="$QS/puppeteer/admin-token"
G="$BIN/geppetto"

echo "==> Starting a puppet named $PUPPET_NAME (state in $QS/puppet)"
enroll=()
if [ ! -f "$QS/puppet/credential" ]; then
    # The token goes through a file, never on the puppet's command line.
    (umask 077 && "$G" enroll-tokens create --uses 1 --expires 10m --labels env=demo \
        --auto-approve --description "quickstart puppet" >"$QS/enroll-token")
    enroll=(--enroll-token-file "$QS/enroll-token")
fi
os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-linux}" || echo linux)
"$BIN/puppet" run --server "$GEPPETTO_SERVER" --ca "$GEPPETTO_CA" "${enroll[@]}" \
    --state-dir "$QS/puppet" --name "$PUPPET_NAME" --labels "os=$os_id" \
    >"$QS/puppet.log" 2>&1 &
echo $! >"$QS/puppet.pid"
if ! wait_for "the puppet to connect" 30 sh -c "'$G' puppets show $PUPPET_NAME -o json | grep -q '\"polling\": *true'"; then
    tail -20 "$QS/puppet.log" >&2
    exit 1
fi
"$G" puppets list

echo "==> Running the sample task 'hello' on $PUPPET_NAME"
if ! "$G" tasks show hello >/dev/null 2>&1; then
    "$G" tasks create hello --timeout 1m \
        --command 'echo "Hello from $(hostname), $(uname -sr)"; echo "uptime: $(uptime)"; echo "this line went to stderr" >&2' >/dev/null
fi
# By name: the tour relabels the puppet, and a restart must still work.
job=$("$G" jobs run hello --puppet "$PUPPET_NAME")
"$G" jobs watch "$job"
echo "==> Output of $job on $PUPPET_NAME:"
"$G" logs "$job" --puppet "$PUPPET_NAME"

cat <<EOT

Geppetto is up: a puppeteer (pid $(cat "$QS/puppeteer.pid"), log $QS/puppeteer.log)
and a puppet (pid $(cat "$QS/puppet.pid"), log $QS/puppet.log).

Point your shell at it and try the CLI:
  export PATH="$BIN:\$PATH"
  export GEPPETTO_SERVER=$GEPPETTO_SERVER
  export GEPPETTO_CA=$GEPPETTO_CA
  export GEPPETTO_TOKEN_FILE=$GEPPETTO_TOKEN_FILE
  geppetto puppets show $PUPPET_NAME
  geppetto jobs show $job
  geppetto tasks create disk --command 'df -h /' --timeout 30s
  geppetto jobs run disk --target os=$os_id --wait
  geppetto --help

Stop everything with: deploy/quickstart.sh stop
EOT
