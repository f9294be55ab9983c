#!/usr/bin/env bash
# Network benchmarks for BENCHMARKS.md, sections "Bad networks" and "Sites
# and the peer cache": bytes per hour on the wire for one idle puppet, the
# time to deliver a 5 MiB log and a 20 MiB artifact over 512 kbit/s, 300 ms
# RTT, 2 % loss, against a plain TCP transfer over the same link; and
# (`netbench_site`, about an hour) sites of 3 and 10 puppets fetching a 5 and
# a 20 MiB artifact with the peer cache off and on. A real puppeteer process and a real
# puppet process in a network namespace behind a veth pair (tbf rate,
# nftables loss, delay from the test relay since the kernel has no netem):
# the `netbench` bench of the puppeteer, puppeteer/benches/netbench/.
#
# Needs root, iproute2 and nftables (apt-get install -y nftables). Takes
# about NETBENCH_IDLE_WINDOW seconds (default 600) plus the build; the
# artifact alone about 7 minutes.
#
# Knobs (environment): NETBENCH_IDLE_WINDOW (s), NETBENCH_LOG_BYTES,
# NETBENCH_RAW_BYTES, NETBENCH_ARTIFACT_BYTES. Extra arguments name the
# benchmarks to run, e.g. `deploy/netbench.sh netbench_transfers` for the log
# transfer only, `deploy/netbench.sh netbench_artifact` for the artifact.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "netbench: needs root (network namespaces, tc, nftables)" >&2
    exit 2
fi
for tool in ip tc nft; do
    command -v "$tool" >/dev/null || {
        echo "netbench: \`$tool\` is missing (iproute2, nftables)" >&2
        exit 2
    }
done

echo "netbench: $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Two benchmarks run at once, each on its own namespace and link. Network
# bound: the debug build (`--profile dev`) is enough.
GEPPETTO_REQUIRE_NETNS=1 cargo bench -p puppeteer --profile dev --bench netbench -- "$@" 2>&1 |
    grep -E '^(NETBENCH|thread .* panicked)'
