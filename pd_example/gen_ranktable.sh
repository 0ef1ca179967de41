#!/usr/bin/env bash
# Write the HCCL rank table of a PD deployment across Ascend nodes: which NPUs (on which
# node, with which device IP) prefill and which decode. Run it on every node.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="pd_example/gen_ranktable.sh"

usage() {
    cat <<EOF
Usage: bash $PROG --ips IP [IP...] --network-card-name NAME \\
           --prefill-device-cnt N --decode-device-cnt N [OPTIONS]

Writes the rank table JSON that DISAGGREGATED_PREFILL_RANK_TABLE_PATH points the
instances to. Run the same command on every node, each node's IP among --ips: every
node reads its own NPUs' IPs with \`hccn_tool -i DEV -ip -g\`, the first node of --ips
collects all of them over TCP, and every node writes the same table.

The devices of all nodes, in --ips order then device order, are numbered; the first
--prefill-device-cnt of them go to "prefill_device_list", the next --decode-device-cnt
to "decode_device_list" (the rest are left out). Each entry has server_id (node IP),
device_id, device_ip, cluster_id (1, 2, ... over all listed devices) and rank_id
(0, 1, ... within its list).

  --ips IP...                 IPs of all nodes, this one included (required)
  --npus-per-node N           NPUs of each node: devices 0..N-1 [8]
  --local-device-ids LIST     this node's devices instead, e.g. 0,1,2,3 or 0-3
  --network-card-name NAME    NIC whose IPv4 address is this node's IP (required
                              unless NODE_IP is set)
  --prefill-device-cnt N      NPUs for prefill instances (required)
  --decode-device-cnt N       NPUs for decode instances (required)
  --output FILE               [pd_example/ranktable.json]
  --port P                    TCP port on the first node for collecting [6657]
                              (env RANKTABLE_PORT)
  --timeout SEC               how long nodes wait for each other [600]
                              (env RANKTABLE_TIMEOUT)
  -h, --help                  show this help

Environment:
  HCCN_TOOL   hccn_tool to run [hccn_tool on PATH, else
              /usr/local/Ascend/driver/tools/hccn_tool, else /usr/bin/hccn_tool]
  NODE_IP     this node's IP, instead of reading it from --network-card-name

Example (the seed's 4 nodes, 16 NPUs prefill + 16 decode):
  bash $PROG --ips 172.19.32.175 172.19.241.49 172.19.123.51 172.19.190.36 \\
    --npus-per-node 8 --network-card-name eth0 --prefill-device-cnt 16 --decode-device-cnt 16
EOF
}

log() { printf '%s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
die_usage() { printf '%s: %s\nTry --help.\n' "$PROG" "$*" >&2; exit 2; }

IPS=()
NPUS_PER_NODE=8
LOCAL_DEVICE_IDS=""
NETWORK_CARD_NAME=""
PREFILL_DEVICE_CNT=""
DECODE_DEVICE_CNT=""
OUTPUT="$SCRIPT_DIR/ranktable.json"
RANKTABLE_PORT="${RANKTABLE_PORT:-6657}"
RANKTABLE_TIMEOUT="${RANKTABLE_TIMEOUT:-600}"

need_value() { (($1 >= 2)) || die_usage "$2 needs a value"; }
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --ips)
            shift
            while (($#)) && [[ "$1" != --* ]]; do IPS+=("$1"); shift; done
            ;;
        --npus-per-node) need_value $# "$1"; NPUS_PER_NODE="$2"; shift 2 ;;
        --local-device-ids) need_value $# "$1"; LOCAL_DEVICE_IDS="$2"; shift 2 ;;
        --network-card-name) need_value $# "$1"; NETWORK_CARD_NAME="$2"; shift 2 ;;
        --prefill-device-cnt) need_value $# "$1"; PREFILL_DEVICE_CNT="$2"; shift 2 ;;
        --decode-device-cnt) need_value $# "$1"; DECODE_DEVICE_CNT="$2"; shift 2 ;;
        --output) need_value $# "$1"; OUTPUT="$2"; shift 2 ;;
        --port) need_value $# "$1"; RANKTABLE_PORT="$2"; shift 2 ;;
        --timeout) need_value $# "$1"; RANKTABLE_TIMEOUT="$2"; shift 2 ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
done

# ---------------------------------------------------------------- validation
is_ipv4() {
    local IFS=. part
    local -a parts
    [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
    read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do ((10#$part <= 255)) || return 1; done
}
require_int() {  # NAME VALUE MIN
    [[ "$2" =~ ^[0-9]+$ ]] || die_usage "$1 must be a whole number, got '$2'"
    ((10#$2 >= $3)) || die_usage "$1 must be at least $3, got '$2'"
}

((${#IPS[@]})) || die_usage "--ips needs at least one node IP"
declare -A SEEN=()
for ip in "${IPS[@]}"; do
    is_ipv4 "$ip" || die_usage "'$ip' in --ips is not an IPv4 address"
    [[ -z "${SEEN[$ip]:-}" ]] || die_usage "$ip appears twice in --ips"
    SEEN[$ip]=1
done
[[ -n "$PREFILL_DEVICE_CNT" ]] || die_usage "--prefill-device-cnt is required"
[[ -n "$DECODE_DEVICE_CNT" ]] || die_usage "--decode-device-cnt is required"
require_int --prefill-device-cnt "$PREFILL_DEVICE_CNT" 1
require_int --decode-device-cnt "$DECODE_DEVICE_CNT" 1
require_int --npus-per-node "$NPUS_PER_NODE" 1
require_int --port "$RANKTABLE_PORT" 1
require_int --timeout "$RANKTABLE_TIMEOUT" 1
((10#$RANKTABLE_PORT <= 65535)) || die_usage "--port must be at most 65535"
PREFILL_DEVICE_CNT=$((10#$PREFILL_DEVICE_CNT))
DECODE_DEVICE_CNT=$((10#$DECODE_DEVICE_CNT))
NPUS_PER_NODE=$((10#$NPUS_PER_NODE))

DEVICE_IDS=()
if [[ -n "$LOCAL_DEVICE_IDS" ]]; then
    IFS=',' read -r -a parts <<<"$LOCAL_DEVICE_IDS"
    for part in "${parts[@]}"; do
        if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]] && ((10#${BASH_REMATCH[1]} <= 10#${BASH_REMATCH[2]})); then
            for ((d = 10#${BASH_REMATCH[1]}; d <= 10#${BASH_REMATCH[2]}; d++)); do DEVICE_IDS+=("$d"); done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            DEVICE_IDS+=($((10#$part)))
        else
            die_usage "bad --local-device-ids '$LOCAL_DEVICE_IDS' (use 0,1,2,3 or 0-3)"
        fi
    done
else
    for ((d = 0; d < NPUS_PER_NODE; d++)); do DEVICE_IDS+=("$d"); done
fi

NNODES=${#IPS[@]}
# Every node is assumed to list as many devices as this one.
TOTAL=$((NNODES * ${#DEVICE_IDS[@]}))
if ((PREFILL_DEVICE_CNT + DECODE_DEVICE_CNT > TOTAL)); then
    die_usage "--prefill-device-cnt + --decode-device-cnt = $((PREFILL_DEVICE_CNT + DECODE_DEVICE_CNT)) is more than the $TOTAL devices of $NNODES node(s) x ${#DEVICE_IDS[@]}"
fi
if [[ -z "${NODE_IP:-}" && -z "$NETWORK_CARD_NAME" ]]; then
    die_usage "--network-card-name is required (or set NODE_IP)"
fi

# ---------------------------------------------------------------- hccn_tool
if [[ -n "${HCCN_TOOL:-}" ]]; then
    if [[ "$HCCN_TOOL" == */* ]]; then
        [[ -x "$HCCN_TOOL" ]] || die "HCCN_TOOL=$HCCN_TOOL is not an executable file"
    else
        command -v "$HCCN_TOOL" >/dev/null 2>&1 || die "HCCN_TOOL=$HCCN_TOOL is not on PATH"
    fi
elif command -v hccn_tool >/dev/null 2>&1; then
    HCCN_TOOL="$(command -v hccn_tool)"
elif [[ -x /usr/local/Ascend/driver/tools/hccn_tool ]]; then
    HCCN_TOOL=/usr/local/Ascend/driver/tools/hccn_tool
elif [[ -x /usr/bin/hccn_tool ]]; then
    HCCN_TOOL=/usr/bin/hccn_tool
else
    die "hccn_tool not found (not on PATH, not in /usr/local/Ascend/driver/tools or /usr/bin). It comes with the Ascend NPU driver: run this on an Ascend host, or set HCCN_TOOL=/path/to/hccn_tool."
fi

# ---------------------------------------------------------------- this node
if [[ -n "${NODE_IP:-}" ]]; then
    LOCAL_IP="$NODE_IP"
    is_ipv4 "$LOCAL_IP" || die_usage "NODE_IP '$LOCAL_IP' is not an IPv4 address"
else
    command -v ip >/dev/null 2>&1 || die "the \`ip\` command is missing: set NODE_IP to this node's IP"
    LOCAL_IP="$(ip -4 -o addr show dev "$NETWORK_CARD_NAME" 2>/dev/null |
        awk '{for (i = 1; i < NF; i++) if ($i == "inet") {split($(i + 1), a, "/"); print a[1]; exit}}')" || true
    [[ -n "$LOCAL_IP" ]] || die "no IPv4 address on network card '$NETWORK_CARD_NAME' (see: ip -4 addr); check --network-card-name or set NODE_IP"
fi

NODE_RANK=-1
for i in "${!IPS[@]}"; do
    if [[ "${IPS[i]}" == "$LOCAL_IP" ]]; then NODE_RANK=$i; break; fi
done
((NODE_RANK >= 0)) || die "this node's IP $LOCAL_IP (from ${NODE_IP:+NODE_IP}${NODE_IP:-card $NETWORK_CARD_NAME}) is not among --ips ${IPS[*]}"

# "DEVICE_ID DEVICE_IP" per local device, from hccn_tool.
LOCAL_DEVICES=()
for dev in "${DEVICE_IDS[@]}"; do
    out="$("$HCCN_TOOL" -i "$dev" -ip -g 2>&1)" || die "'$HCCN_TOOL -i $dev -ip -g' failed: $out"
    dev_ip="$(awk -F: '/ipaddr/ {gsub(/[ \t\r]/, "", $2); print $2; exit}' <<<"$out")"
    is_ipv4 "${dev_ip:-}" || die "no ipaddr in the output of '$HCCN_TOOL -i $dev -ip -g': $out"
    LOCAL_DEVICES+=("$dev $dev_ip")
done

log "Node $NODE_RANK of $NNODES ($LOCAL_IP): ${#LOCAL_DEVICES[@]} device(s) from $HCCN_TOOL"

# ---------------------------------------------------------------- gather and write
# The first node of --ips collects every node's devices over TCP (one JSON line each way)
# and sends the finished table back; with one node nothing goes over the network.
mkdir -p "$(dirname "$OUTPUT")"
python3 - "$(printf '%s\n' "${LOCAL_DEVICES[@]}")" "$OUTPUT" "$NODE_RANK" "$RANKTABLE_PORT" \
    "$RANKTABLE_TIMEOUT" "$PREFILL_DEVICE_CNT" "$DECODE_DEVICE_CNT" "${IPS[@]}" <<'PY' || exit 1
import json
import socket
import sys
import time

local_list, output, node_rank, port, timeout, n_prefill, n_decode = sys.argv[1:8]
ips = sys.argv[8:]
node_rank, port, timeout = int(node_rank), int(port), float(timeout)
n_prefill, n_decode = int(n_prefill), int(n_decode)
local = [line.split() for line in local_list.splitlines() if line.strip()]
mine = [{"device_id": dev, "device_ip": dev_ip} for dev, dev_ip in local]


def fail(message):
    sys.stderr.write(f"ERROR: {message}\n")
    sys.exit(1)


def build_table(per_node):
    devices = []
    for rank, node_ip in enumerate(ips):
        for entry in per_node[rank]:
            devices.append({"server_id": node_ip, "device_id": entry["device_id"],
                            "device_ip": entry["device_ip"]})
    if n_prefill + n_decode > len(devices):
        fail(f"{n_prefill} prefill + {n_decode} decode devices asked for, "
             f"but the nodes have {len(devices)} in all")
    chosen = devices[:n_prefill + n_decode]
    for cluster_id, entry in enumerate(chosen, start=1):
        entry["cluster_id"] = str(cluster_id)
    prefill, decode = chosen[:n_prefill], chosen[n_prefill:]
    for group in (prefill, decode):
        for rank_id, entry in enumerate(group):
            entry["rank_id"] = str(rank_id)
    return {"version": "1.2", "server_count": str(len(ips)),
            "prefill_device_list": prefill, "decode_device_list": decode,
            "status": "completed"}


def read_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data.decode()) if data.strip() else None


def collect():
    per_node = {0: mine}
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((ips[0], port))
    except OSError as error:
        fail(f"cannot listen on {ips[0]}:{port} to collect the other nodes ({error}); "
             "choose another --port on every node")
    server.listen(len(ips))
    deadline = time.monotonic() + timeout
    conns = []
    print(f"Waiting for {len(ips) - 1} other node(s) on {ips[0]}:{port}...", flush=True)
    while len(per_node) < len(ips):
        server.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            conn, _ = server.accept()
        except socket.timeout:
            missing = [ips[r] for r in range(len(ips)) if r not in per_node]
            fail(f"no answer after {timeout:.0f}s from node(s) {' '.join(missing)}: "
                 "run this same command on them")
        conn.settimeout(30)
        message = read_line(conn)
        if (not message or message.get("ips") != ips
                or message.get("node_rank") not in range(1, len(ips))):
            conn.close()
            print("Ignored a node that ran with different --ips.", file=sys.stderr)
            continue
        per_node[int(message["node_rank"])] = message["devices"]
        conns.append(conn)
    table = build_table(per_node)
    for conn in conns:
        conn.sendall((json.dumps(table) + "\n").encode())
        conn.close()
    server.close()
    return table


def join():
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((ips[0], port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                fail(f"could not reach the first node {ips[0]}:{port} within {timeout:.0f}s: "
                     "run this same command there too")
            time.sleep(1)
    conn.sendall((json.dumps({"ips": ips, "node_rank": node_rank, "devices": mine}) + "\n")
                 .encode())
    conn.settimeout(timeout)
    table = read_line(conn)
    conn.close()
    if not table:
        fail(f"the first node {ips[0]} closed the connection without a rank table")
    return table


if len(ips) == 1:
    table = build_table({0: mine})
elif node_rank == 0:
    table = collect()
else:
    table = join()
with open(output, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=4)
    f.write("\n")
print(f"Rank table written to {output}: {len(table['prefill_device_list'])} prefill and "
      f"{len(table['decode_device_list'])} decode device(s) on {table['server_count']} node(s)")
PY
