#!/usr/bin/env bash
# Benchmarks our broker against Mosquitto in the same run with `mqttproto bench`, and prints a
# side-by-side table with ratios (each broker / Mosquitto; for latency and memory, lower is
# better).
#
# Usage: scripts/bench-broker.sh [--runs N] [--quick] [-- EXTRA BENCH ARGS...]
#
#   --runs N    repeat the whole comparison N times (default 1); the table gives min–max ranges
#   --quick     small counts (a smoke run of the script itself)
#
# Environment:
#   MOSQUITTO          Mosquitto binary (default /usr/sbin/mosquitto)
#   BROKERS            space-separated broker names to run (default "ours mosquitto"); a name
#                      NAME other than "mosquitto" is started with the command in BROKER_CMD_NAME
#                      (the port appended as "--listen 127.0.0.1:PORT"); "ours" defaults to
#                      "target/release/mqttproto broker --max-connections 100000".
#                      E.g. BROKERS="ours blocking mosquitto"
#                           BROKER_CMD_blocking="target/release/mqttproto broker --driver blocking --max-connections 100000"
#   BROKER_CORE        CPU the brokers are pinned to (default 0)
#   LOAD_CORE          CPU the load tool is pinned to (default 1)
#   OUT                directory for logs and raw results (default: a new temporary directory)
#
# Each broker is started fresh twice per run: once for the idle-connections scenario (so that its
# memory growth is measured from a fresh process), once for the message scenarios. The brokers
# and the load tool are pinned to different cores with taskset; TCP_NODELAY is on everywhere.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNS=1
QUICK=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
BROKERS=${BROKERS:-"ours mosquitto"}
BROKER_CORE=${BROKER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
OUT=${OUT:-$(mktemp -d /tmp/bench-broker.XXXXXX)}
mkdir -p "$OUT"
BIN="$ROOT/target/release/mqttproto"
: "${BROKER_CMD_ours:=$BIN broker --max-connections 100000}"

# Idle connections need file descriptors in both the broker and the load tool.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
FDS=$(ulimit -n)
IDLE=10000
if [[ $QUICK == 1 ]]; then
    IDLE=500
    EXTRA=(--count 2000 --fanout-count 500 --latency-count 500 --large-count 5 "${EXTRA[@]}")
fi
if [[ $FDS != unlimited && $FDS -lt $((IDLE + 512)) ]]; then
    echo "warning: ulimit -n is $FDS: idle scenario lowered to $((FDS - 512)) connections" >&2
    IDLE=$((FDS - 512))
fi

echo "building release..." >&2
cargo build --release -p mqttproto-cli >&2

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

PID=""
stop_broker() {
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}
trap stop_broker EXIT

# start_broker NAME PORT LOG: starts the broker pinned to BROKER_CORE, sets PID, waits for the port.
start_broker() {
    local name=$1 port=$2 log=$3
    if [[ $name == mosquitto ]]; then
        local conf="$OUT/mosquitto-$port.conf"
        cat > "$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_connections -1
max_inflight_messages 100
max_queued_messages 1000000
max_queued_bytes 0
persistence false
log_dest none
EOF
        taskset -c "$BROKER_CORE" "$MOSQUITTO" -c "$conf" > "$log" 2>&1 &
    else
        local var="BROKER_CMD_$name"
        local cmd=${!var:-}
        if [[ -z $cmd ]]; then
            echo "no command for broker '$name': set $var" >&2
            exit 2
        fi
        # shellcheck disable=SC2086
        taskset -c "$BROKER_CORE" $cmd --listen "127.0.0.1:$port" > "$log" 2>&1 &
    fi
    PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "broker '$name' exited; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "broker '$name' does not listen on port $port" >&2
    exit 1
}

RESULTS="$OUT/results.txt"
: > "$RESULTS"
for run in $(seq "$RUNS"); do
    for name in $BROKERS; do
        echo "run $run/$RUNS: $name" >&2
        # Idle connections, on a fresh broker.
        port=$(free_port)
        start_broker "$name" "$port" "$OUT/$name-idle-$run.log"
        taskset -c "$LOAD_CORE" timeout 300 "$BIN" bench --quiet --label "$name" -p "$port" \
            --scenario idle --idle-connections "$IDLE" --broker-pid "$PID" \
            | sed "s/^result /result run=$run /" >> "$RESULTS" \
            || echo "warning: idle run against $name failed" >&2
        stop_broker
        # Message scenarios, on another fresh broker.
        port=$(free_port)
        start_broker "$name" "$port" "$OUT/$name-$run.log"
        taskset -c "$LOAD_CORE" timeout 900 "$BIN" bench --quiet --label "$name" -p "$port" \
            --scenario fanin,fanout,latency,large "${EXTRA[@]}" \
            | sed "s/^result /result run=$run /" >> "$RESULTS" \
            || echo "warning: message runs against $name failed" >&2
        stop_broker
    done
done

echo
echo "mqttproto bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "brokers pinned to core $BROKER_CORE, load tool to core $LOAD_CORE; $RUNS run(s); raw results in $RESULTS"
echo
# The table: one row per (scenario, QoS, subscribers, metric); a min–max range per broker over
# the runs, and the ratio of the medians of each broker to Mosquitto's.
python3 - "$RESULTS" "$BROKERS" <<'PY'
import sys, statistics
path, brokers = sys.argv[1], sys.argv[2].split()
rows = {}
order = []
for line in open(path):
    if not line.startswith("result "):
        continue
    kv = dict(p.split("=", 1) for p in line.split()[1:])
    sc = kv["scenario"]
    if sc == "idle":
        metrics = [("connect/s", "connect_per_s", True), ("bytes/conn", "bytes_per_conn", False)]
        key = "idle %s" % kv["connections"]
    else:
        name = {"fanin": "fanin %s:1" % kv["publishers"],
                "fanout": "fanout 1:%s" % kv["subscribers"]}.get(sc, sc)
        key = "%s q%s" % (name, kv["qos"])
        metrics = [("msg/s", "msg_per_s", True), ("lost", "lost", False)]
        if sc == "large":
            metrics.insert(1, ("MiB/s", "mib_per_s", True))
        if sc == "latency":
            metrics = [("p50 µs", "p50_us", False), ("p99 µs", "p99_us", False),
                       ("max µs", "max_us", False), ("lost", "lost", False)]
    for label, field, _higher in metrics:
        k = (key, label)
        if k not in rows:
            rows[k] = {}
            order.append(k)
        v = kv.get(field, "-")
        if v != "-":
            rows[k].setdefault(kv["label"], []).append(float(v))

def rng(vals):
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    fmt = (lambda x: "%.0f" % x) if hi >= 100 else (lambda x: "%.1f" % x)
    return fmt(lo) if lo == hi else "%s–%s" % (fmt(lo), fmt(hi))

# Ratios of each broker against Mosquitto (or, without it, against the last broker).
ref = "mosquitto" if "mosquitto" in brokers else brokers[-1]
others = [b for b in brokers if b != ref]
head = ["scenario", "metric"] + brokers + ["ratio %s/%s" % (b, ref) for b in others]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for k in order:
    vals = rows[k]
    cells = [k[0], k[1]] + [rng(vals.get(b, [])) for b in brokers]
    base = vals.get(ref)
    for other in others:
        a = vals.get(other)
        if a and base and statistics.median(base) > 0 and k[1] != "lost":
            cells.append("%.2f" % (statistics.median(a) / statistics.median(base)))
        else:
            cells.append("-")
    print("| " + " | ".join(cells) + " |")
PY
