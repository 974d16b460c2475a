#!/usr/bin/env bash
# Soak of the gateway's no-op route on the release binary: req/s, p50/p99 and the server's
# resident memory at the start, the end, and 5 s after (does memory come back?).
# Usage: cargo build --release -p nimbus && bench/soak.sh [SECONDS]   (default 300; needs wrk)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nimbus="$root/target/release/nimbus"
data="$(mktemp -d)"
port=9841
"$nimbus" server --data-dir "$data" --listen 127.0.0.1:$port > "$data.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data" "$data.log"' EXIT
sleep 3
"$nimbus" --endpoint http://127.0.0.1:$port --data-dir "$data" deploy "$root/bench/gateway-noop" > /dev/null
wrk -t2 -c16 -d5s http://127.0.0.1:$port/noop > /dev/null
rss() { awk '/VmRSS/{print $2}' /proc/$server/status; }
echo "rss_start_kb $(rss)"
wrk -t2 -c16 -d"${1:-300}"s --latency http://127.0.0.1:$port/noop \
  | grep -E "Requests/sec|50%|99%|requests in|Socket errors|Non-2xx"
echo "rss_end_kb $(rss)"
sleep 5
echo "rss_after_idle_kb $(rss)"
