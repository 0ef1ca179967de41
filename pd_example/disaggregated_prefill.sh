#!/usr/bin/env bash
# Start a disaggregated prefill/decode (PD) deployment on this host: NUM_PREFILL prefill
# instances and NUM_DECODE decode instances of `vllm serve`, then the PD proxy in front of
# them. Stop it with pd_example/kill_server.sh. See pd_example/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="pd_example/disaggregated_prefill.sh"

usage() {
    cat <<EOF
Usage: bash $PROG [OPTIONS]

Starts NUM_PREFILL prefill and NUM_DECODE decode instances of \`vllm serve\` plus the PD
proxy, all on one host; waits until every one answers GET /health; prints the proxy URL,
the log folder and the PID file. Stop everything with: bash pd_example/kill_server.sh

Every setting is an environment variable and an equivalent flag (a flag wins over the
variable). Defaults in brackets; "CPU" and "NPU" defaults differ by platform.

  --model PATH             MODEL               model folder or .gguf file
                                               [CPU: the demo model (vllm demo-model);
                                                NPU: /models/DeepSeek-R1-Distill-Qwen-32B]
  --served-model-name N    SERVED_MODEL_NAME   name clients use [basename of the model path,
                                               without .gguf]
  --num-prefill N          NUM_PREFILL         prefill instances [1]
  --num-decode N           NUM_DECODE          decode instances [1]
  --prefill-tp N           PREFILL_TP          tensor-parallel size of a prefill instance
                                               [CPU 1, NPU 4]
  --decode-tp N            DECODE_TP           tensor-parallel size of a decode instance
                                               [CPU 1, NPU 4]
  --host H                 HOST                address every process listens on [127.0.0.1]
  --proxy-port P           PROXY_PORT          proxy HTTP port [8000]
  --api-key KEY            API_KEY             key every instance (--api-key) and the
                                               proxy (--api-key, --instance-api-key)
                                               require; clients send "Authorization:
                                               Bearer KEY" [VLLM_API_KEY, else none]
  --prefill-base-port P    PREFILL_BASE_PORT   prefill instance i listens on P+i [8100]
  --decode-base-port P     DECODE_BASE_PORT    decode instance i listens on P+i [8200]
  --kv-base-port P         KV_BASE_PORT        instance k (prefills first, then decodes)
                                               gets kv_port P+10*k; it also uses kv_port+1
                                               [14500]
  --max-model-len N        MAX_MODEL_LEN       --max-model-len of every instance [2048]
  --devices LIST           DEVICES             pool the instances are cut from, prefills
                                               first [CPU: the cores this shell may use;
                                               NPU: 0-7]
  --prefill-devices SPEC   PREFILL_DEVICES     devices of each prefill instance, instances
                                               separated by ';' or spaces ("0-3;4-7");
                                               one list for several instances is split
  --decode-devices SPEC    DECODE_DEVICES      the same for decode instances
  --extra-serve-args STR   EXTRA_SERVE_ARGS    extra \`vllm serve\` flags for every instance
                                               (shell quoting honoured)
  --prefill-serve-args STR PREFILL_SERVE_ARGS  extra flags for prefill instances only
  --decode-serve-args STR  DECODE_SERVE_ARGS   extra flags for decode instances only
  --kv-connector NAME      KV_CONNECTOR        kv_connector of --kv-transfer-config
                                               [PushConnector]
  --proxy KIND             PROXY               "vllm" (vllm proxy) or "toy"
                                               (python3 pd_example/toy_proxy_server.py) [vllm]
  --platform P             PLATFORM            auto, cpu or npu [auto: npu when npu-smi is
                                               on PATH, else cpu]
  --health-timeout SEC     HEALTH_TIMEOUT      seconds to wait for /health [600]
  --log-dir DIR            LOG_DIR             logs, one per process [pd_example/logs]
  --pid-file FILE          PID_FILE            PIDs of what was started
                                               [pd_example/logs/pd_pids]
  --dry-run                DRY_RUN=1           check and print the plan, start nothing
  -h, --help                                   show this help

Devices. CPU: core lists ("0", "0-3", "0,2"); each instance runs under taskset -c LIST
with OMP_NUM_THREADS = number of its cores, and VLLM_CPU_KVCACHE_SPACE=1 (GiB) unless
you set it. The pool is split evenly (1 prefill + 1 decode on 2 cores: core 0 and
core 1). NPU: ASCEND_RT_VISIBLE_DEVICES lists; each instance takes its TP size of NPUs
from the pool (default: prefill on NPUs 0-3, decode on 4-7) and its kv-transfer-config
gets "kv_buffer_device": "npu". HCCL_IF_IP, GLOO_SOCKET_IFNAME, TP_SOCKET_IFNAME,
HCCL_SOCKET_IFNAME and the other variables of your shell are passed on unchanged.

Refuses to start (exit 1) when PID_FILE lists a process that is still running or when a
chosen port is busy. Each process runs in its own session (setsid) so that
kill_server.sh can stop it with its children; each is appended to PID_FILE as
"ROLE PID group STARTTIME" the moment it starts.

Examples:
  bash $PROG                                   # CPU: demo model, 1P + 1D + proxy
  NUM_DECODE=2 DEVICES=0-5 bash $PROG          # 1P + 2D, two cores each
  MODEL=/models/DeepSeek-R1-Distill-Qwen-32B bash $PROG --prefill-tp 4 --decode-tp 4
EOF
}

log() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
die_usage() { printf '%s: %s\nTry --help.\n' "$PROG" "$*" >&2; exit 2; }

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

# ---------------------------------------------------------------- settings
MODEL="${MODEL:-}"
SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-}"
NUM_PREFILL="${NUM_PREFILL:-1}"
NUM_DECODE="${NUM_DECODE:-1}"
PREFILL_TP="${PREFILL_TP:-}"
DECODE_TP="${DECODE_TP:-}"
HOST="${HOST:-127.0.0.1}"
PROXY_PORT="${PROXY_PORT:-8000}"
API_KEY="${API_KEY:-${VLLM_API_KEY:-}}"
PREFILL_BASE_PORT="${PREFILL_BASE_PORT:-8100}"
DECODE_BASE_PORT="${DECODE_BASE_PORT:-8200}"
KV_BASE_PORT="${KV_BASE_PORT:-14500}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-2048}"
DEVICES="${DEVICES:-}"
PREFILL_DEVICES="${PREFILL_DEVICES:-}"
DECODE_DEVICES="${DECODE_DEVICES:-}"
EXTRA_SERVE_ARGS="${EXTRA_SERVE_ARGS:-}"
PREFILL_SERVE_ARGS="${PREFILL_SERVE_ARGS:-}"
DECODE_SERVE_ARGS="${DECODE_SERVE_ARGS:-}"
KV_CONNECTOR="${KV_CONNECTOR:-PushConnector}"
PROXY="${PROXY:-vllm}"
PLATFORM="${PLATFORM:-auto}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-600}"
LOG_DIR="${LOG_DIR:-$SCRIPT_DIR/logs}"
PID_FILE="${PID_FILE:-$SCRIPT_DIR/logs/pd_pids}"
DRY_RUN="${DRY_RUN:-0}"

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; shift; continue ;;
        --*=*) opt="${1%%=*}"; val="${1#*=}"; shift ;;
        --*)
            opt="$1"
            (($# >= 2)) || die_usage "$opt needs a value"
            val="$2"; shift 2 ;;
        *) die_usage "unexpected argument '$1'" ;;
    esac
    # A value that looks like the next option means the value was forgotten (extra
    # `vllm serve` flags are the exception: they are options).
    if [[ "$val" == --* && "$opt" != *-serve-args ]]; then die_usage "$opt needs a value"; fi
    case "$opt" in
        --model) MODEL="$val" ;;
        --served-model-name) SERVED_MODEL_NAME="$val" ;;
        --num-prefill) NUM_PREFILL="$val" ;;
        --num-decode) NUM_DECODE="$val" ;;
        --prefill-tp) PREFILL_TP="$val" ;;
        --decode-tp) DECODE_TP="$val" ;;
        --host) HOST="$val" ;;
        --proxy-port) PROXY_PORT="$val" ;;
        --api-key) API_KEY="$val" ;;
        --prefill-base-port) PREFILL_BASE_PORT="$val" ;;
        --decode-base-port) DECODE_BASE_PORT="$val" ;;
        --kv-base-port) KV_BASE_PORT="$val" ;;
        --max-model-len) MAX_MODEL_LEN="$val" ;;
        --devices) DEVICES="$val" ;;
        --prefill-devices) PREFILL_DEVICES="$val" ;;
        --decode-devices) DECODE_DEVICES="$val" ;;
        --extra-serve-args) EXTRA_SERVE_ARGS="$val" ;;
        --prefill-serve-args) PREFILL_SERVE_ARGS="$val" ;;
        --decode-serve-args) DECODE_SERVE_ARGS="$val" ;;
        --kv-connector) KV_CONNECTOR="$val" ;;
        --proxy) PROXY="$val" ;;
        --platform) PLATFORM="$val" ;;
        --health-timeout) HEALTH_TIMEOUT="$val" ;;
        --log-dir) LOG_DIR="$val" ;;
        --pid-file) PID_FILE="$val" ;;
        *) die_usage "unknown option '$opt'" ;;
    esac
done

# ---------------------------------------------------------------- validation
require_int() {  # NAME VALUE MIN [MAX]
    [[ "$2" =~ ^[0-9]+$ ]] || die_usage "$1 must be a whole number, got '$2'"
    ((10#$2 >= $3)) || die_usage "$1 must be at least $3, got '$2'"
    if (($# > 3)); then ((10#$2 <= $4)) || die_usage "$1 must be at most $4, got '$2'"; fi
    printf -v "$1" '%d' "$((10#$2))"  # "08100" -> 8100, never read as octal
}

case "$PLATFORM" in
    auto) if command -v npu-smi >/dev/null 2>&1; then PLATFORM=npu; else PLATFORM=cpu; fi ;;
    cpu | npu) ;;
    *) die_usage "PLATFORM must be auto, cpu or npu, got '$PLATFORM'" ;;
esac
if [[ "$PLATFORM" == npu ]]; then
    PREFILL_TP="${PREFILL_TP:-4}"; DECODE_TP="${DECODE_TP:-4}"
else
    PREFILL_TP="${PREFILL_TP:-1}"; DECODE_TP="${DECODE_TP:-1}"
fi
case "$PROXY" in vllm | toy) ;; *) die_usage "PROXY must be vllm or toy, got '$PROXY'" ;; esac

require_int NUM_PREFILL "$NUM_PREFILL" 1
require_int NUM_DECODE "$NUM_DECODE" 1
require_int PREFILL_TP "$PREFILL_TP" 1
require_int DECODE_TP "$DECODE_TP" 1
require_int PROXY_PORT "$PROXY_PORT" 1 65535
require_int PREFILL_BASE_PORT "$PREFILL_BASE_PORT" 1 65535
require_int DECODE_BASE_PORT "$DECODE_BASE_PORT" 1 65535
require_int KV_BASE_PORT "$KV_BASE_PORT" 1 65535
require_int MAX_MODEL_LEN "$MAX_MODEL_LEN" 1
require_int HEALTH_TIMEOUT "$HEALTH_TIMEOUT" 1
[[ -n "$HOST" ]] || die_usage "HOST must not be empty"
LOG_DIR="$(abspath "$LOG_DIR")"
PID_FILE="$(abspath "$PID_FILE")"

# Where the processes are reached: a wildcard listen address is reached on loopback.
case "$HOST" in
    0.0.0.0) CONNECT_HOST=127.0.0.1 ;;
    ::) CONNECT_HOST=::1 ;;
    *) CONNECT_HOST="$HOST" ;;
esac
url_host() { if [[ "$1" == *:* ]]; then printf '[%s]' "$1"; else printf '%s' "$1"; fi; }
URL_HOST="$(url_host "$CONNECT_HOST")"

# Extra flags, split with shell quoting rules (so JSON values may contain spaces).
split_args() {  # STRING -> NUL-separated words on stdout
    python3 -c 'import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))' "$1"
}
# shellcheck disable=SC2034  # the array is written through a nameref
read_args() {  # ARRAY VARIABLE: split the variable's value into the array
    local -n into="$1"
    local text="${!2}"
    into=()
    [[ -n "$text" ]] || return 0
    split_args "$text" >/dev/null 2>&1 || die_usage "$2 cannot be split into words (unbalanced quotes?): $text"
    mapfile -d '' into < <(split_args "$text")
}
read_args EXTRA_ARGS EXTRA_SERVE_ARGS
read_args PREFILL_ARGS PREFILL_SERVE_ARGS
read_args DECODE_ARGS DECODE_SERVE_ARGS

# ---------------------------------------------------------------- instances
# Instance k: prefills are k = 0..NUM_PREFILL-1, decodes follow.
NUM_INSTANCES=$((NUM_PREFILL + NUM_DECODE))
ROLES=(); NAMES=(); PORTS=(); KV_PORTS=(); TPS=(); DEVS=()
for ((k = 0; k < NUM_INSTANCES; k++)); do
    if ((k < NUM_PREFILL)); then
        ROLES+=(prefill); NAMES+=("prefill-$k"); PORTS+=($((PREFILL_BASE_PORT + k))); TPS+=("$PREFILL_TP")
    else
        i=$((k - NUM_PREFILL))
        ROLES+=(decode); NAMES+=("decode-$i"); PORTS+=($((DECODE_BASE_PORT + i))); TPS+=("$DECODE_TP")
    fi
    KV_PORTS+=($((KV_BASE_PORT + 10 * k)))
    DEVS+=("")
done

expand_list() {  # "0-3,6" -> "0 1 2 3 6"
    local spec="$1" part out=() i
    local -a parts
    IFS=',' read -r -a parts <<<"$spec"
    ((${#parts[@]})) || return 1
    for part in "${parts[@]}"; do
        if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
            ((10#${BASH_REMATCH[1]} <= 10#${BASH_REMATCH[2]})) || return 1
            for ((i = 10#${BASH_REMATCH[1]}; i <= 10#${BASH_REMATCH[2]}; i++)); do out+=("$i"); done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            out+=($((10#$part)))
        else
            return 1
        fi
    done
    printf '%s\n' "${out[*]}"
}
join_commas() { local IFS=,; printf '%s\n' "$*"; }

default_pool() {
    if [[ "$PLATFORM" == npu ]]; then
        echo "0-7"
    elif [[ -r /proc/self/status ]] && grep -q '^Cpus_allowed_list:' /proc/self/status; then
        awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status
    else
        local n
        n="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
        echo "0-$((n - 1))"
    fi
}

# Gives the instances in "$@" (indices) devices from the pool in POOL (an array).
# NPU: each takes its TP size of devices. CPU: the pool is shared out evenly.
allot_from_pool() {
    local -a who=("$@")
    local n=${#who[@]} k pos=0 share i
    ((n)) || return 0
    if [[ "$PLATFORM" == npu ]]; then
        for k in "${who[@]}"; do
            if ((pos + TPS[k] > ${#POOL[@]})); then
                die "not enough NPUs: ${NAMES[k]} needs ${TPS[k]} but the pool (${POOL[*]:-empty}) is used up; set DEVICES, PREFILL_DEVICES or DECODE_DEVICES"
            fi
            DEVS[k]="$(join_commas "${POOL[@]:pos:TPS[k]}")"
            pos=$((pos + TPS[k]))
        done
    else
        ((${#POOL[@]})) || die "no CPU cores left for ${NAMES[${who[0]}]}; set DEVICES, PREFILL_DEVICES or DECODE_DEVICES"
        share=$((${#POOL[@]} / n))
        if ((share == 0)); then
            warn "${#POOL[@]} core(s) for $n instance(s): some instances share a core"
            for ((i = 0; i < n; i++)); do DEVS[who[i]]="${POOL[i % ${#POOL[@]}]}"; done
        else
            for ((i = 0; i < n; i++)); do
                DEVS[who[i]]="$(join_commas "${POOL[@]:i*share:share}")"
            done
        fi
    fi
}

# Applies PREFILL_DEVICES / DECODE_DEVICES to the instances of one role.
apply_role_spec() {  # ROLE SPEC FIRST COUNT
    local role="$1" spec="$2" first="$3" count="$4" entry expanded i
    local -a entries=()
    read -r -a entries <<<"${spec//;/ }"
    ((${#entries[@]})) || return 0
    for entry in "${entries[@]}"; do
        expand_list "$entry" >/dev/null || die_usage "bad ${role^^}_DEVICES entry '$entry' (use lists like 0-3,6)"
    done
    if ((${#entries[@]} == count)); then
        for ((i = 0; i < count; i++)); do
            expanded="$(expand_list "${entries[i]}")"
            DEVS[first + i]="${expanded// /,}"
        done
    elif ((${#entries[@]} == 1)); then
        read -r -a POOL <<<"$(expand_list "${entries[0]}")"
        local -a who=()
        for ((i = 0; i < count; i++)); do who+=($((first + i))); done
        allot_from_pool "${who[@]}"
    else
        die_usage "${role^^}_DEVICES lists ${#entries[@]} instance(s) but NUM_${role^^} is $count"
    fi
}

[[ -n "$DEVICES" ]] || DEVICES="$(default_pool)"
expand_list "$DEVICES" >/dev/null || die_usage "bad DEVICES '$DEVICES' (use a list like 0-3,6)"
[[ -z "$PREFILL_DEVICES" ]] || apply_role_spec prefill "$PREFILL_DEVICES" 0 "$NUM_PREFILL"
[[ -z "$DECODE_DEVICES" ]] || apply_role_spec decode "$DECODE_DEVICES" "$NUM_PREFILL" "$NUM_DECODE"

# Instances without a role list draw from DEVICES, minus the devices named above.
declare -A TAKEN=()
WAITING=()
for ((k = 0; k < NUM_INSTANCES; k++)); do
    if [[ -n "${DEVS[k]}" ]]; then
        for d in ${DEVS[k]//,/ }; do TAKEN[$d]=1; done
    else
        WAITING+=("$k")
    fi
done
POOL=()
for d in $(expand_list "$DEVICES"); do [[ -n "${TAKEN[$d]:-}" ]] || POOL+=("$d"); done
allot_from_pool "${WAITING[@]}"

if [[ "$PLATFORM" == npu ]]; then
    for ((k = 0; k < NUM_INSTANCES; k++)); do
        count=$(tr ',' '\n' <<<"${DEVS[k]}" | wc -l)
        ((count == TPS[k])) || die_usage "${NAMES[k]} has ${count} NPU(s) (${DEVS[k]}) but tensor-parallel size ${TPS[k]}"
    done
fi

# ---------------------------------------------------------------- refusals
# A PID file line: ROLE PID KIND STARTTIME (KIND "group": started by setsid as a process
# group leader; STARTTIME: field 22 of /proc/PID/stat, "-" where unknown).
proc_start_time() {
    local stat rest
    local -a fields
    if [[ -r "/proc/$1/stat" ]] && stat="$(<"/proc/$1/stat")" 2>/dev/null; then
        rest="${stat##*) }"
        read -r -a fields <<<"$rest"
        printf '%s\n' "${fields[19]:--}"
    else
        echo -
    fi
}
# True when PID runs (not a zombie) and, if START is known, is the process recorded.
pid_alive() {  # PID [START]
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]] || return 1
    if [[ -n "${2:-}" && "$2" != - ]]; then
        local now
        now="$(proc_start_time "$1")"
        [[ "$now" == - || "$now" == "$2" ]] || return 1
    fi
    return 0
}

if [[ -e "$PID_FILE" ]]; then
    live=()
    while read -r role pid _kind start _rest; do
        [[ -z "${role:-}" || "$role" == \#* ]] && continue
        [[ "${pid:-}" =~ ^[0-9]+$ ]] || continue
        if pid_alive "$pid" "${start:-}"; then live+=("$role=$pid"); fi
    done <"$PID_FILE"
    if ((${#live[@]})); then
        die "refusing to start: $PID_FILE lists processes that are still running (${live[*]}): a deployment is up. Stop it first with: bash pd_example/kill_server.sh --pid-file $PID_FILE"
    fi
    if [[ "$DRY_RUN" != 1 ]]; then
        log "Removing stale PID file $PID_FILE (none of its processes runs)."
        rm -f "$PID_FILE"
    fi
fi

ALL_PORTS=("$PROXY_PORT")
PORT_OWNERS=(proxy)
for ((k = 0; k < NUM_INSTANCES; k++)); do
    ALL_PORTS+=("${PORTS[k]}" "${KV_PORTS[k]}" $((KV_PORTS[k] + 1)))
    PORT_OWNERS+=("${NAMES[k]} (HTTP)" "${NAMES[k]} (kv_port)" "${NAMES[k]} (kv_port+1)")
done
declare -A SEEN_PORT=()
for ((i = 0; i < ${#ALL_PORTS[@]}; i++)); do
    p="${ALL_PORTS[i]}"
    ((p <= 65535)) || die_usage "${PORT_OWNERS[i]} would use port $p (> 65535); lower the base ports"
    if [[ -n "${SEEN_PORT[$p]:-}" ]]; then
        die_usage "port $p is chosen twice: ${SEEN_PORT[$p]} and ${PORT_OWNERS[i]}; space the base ports further apart"
    fi
    SEEN_PORT[$p]="${PORT_OWNERS[i]}"
done

# Ports that cannot be bound on HOST right now (one python3 call for all of them).
BUSY="$(python3 - "$HOST" "${ALL_PORTS[@]}" <<'PY'
import socket
import sys

host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for port in sys.argv[2:]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError:
        print(port)
    finally:
        sock.close()
PY
)" || die "could not check the ports with python3"
if [[ -n "$BUSY" ]]; then
    msg=()
    for p in $BUSY; do msg+=("$p (${SEEN_PORT[$p]})"); done
    die "refusing to start: port(s) already in use on $HOST: ${msg[*]}. Stop what holds them (bash pd_example/kill_server.sh if it is an earlier deployment) or choose other ports (PROXY_PORT, PREFILL_BASE_PORT, DECODE_BASE_PORT, KV_BASE_PORT)."
fi

# ---------------------------------------------------------------- model
if [[ -z "$MODEL" ]]; then
    if [[ "$PLATFORM" == npu ]]; then
        for candidate in /models/DeepSeek-R1-Distill-Qwen-32B "$SCRIPT_DIR/../models/DeepSeek-R1-Distill-Qwen-32B"; do
            if [[ -d "$candidate" ]]; then MODEL="$candidate"; break; fi
        done
        [[ -n "$MODEL" ]] || die "no model found at /models/DeepSeek-R1-Distill-Qwen-32B; set MODEL=/path/to/model (its attention heads must split over TP=$PREFILL_TP and TP=$DECODE_TP)"
    else
        MODEL="$(vllm demo-model)" || die "could not find the demo model (\`vllm demo-model\` failed); install it with bash scripts/install.sh or set MODEL"
    fi
fi
if [[ -z "$SERVED_MODEL_NAME" ]]; then
    SERVED_MODEL_NAME="$(basename -- "${MODEL%/}")"
    SERVED_MODEL_NAME="${SERVED_MODEL_NAME%.gguf}"
fi

# ---------------------------------------------------------------- commands
kv_config() {  # INDEX -> the --kv-transfer-config JSON of instance INDEX
    local k="$1" role=kv_producer extra=""
    [[ "${ROLES[k]}" == decode ]] && role=kv_consumer
    [[ "$PLATFORM" == npu ]] && extra=',"kv_buffer_device":"npu"'
    printf '{"kv_connector":"%s","kv_role":"%s","kv_ip":"%s","kv_port":%s,"engine_id":"%s"%s}' \
        "$KV_CONNECTOR" "$role" "$CONNECT_HOST" "${KV_PORTS[k]}" "${NAMES[k]}" "$extra"
}

# Fills CMD with the full command line (env, pinning, vllm serve) of instance INDEX.
build_instance_cmd() {
    local k="$1" ncores
    CMD=(env)
    if [[ "$PLATFORM" == npu ]]; then
        CMD+=("ASCEND_RT_VISIBLE_DEVICES=${DEVS[k]}")
    else
        ncores=$(tr ',' '\n' <<<"${DEVS[k]}" | wc -l)
        CMD+=("OMP_NUM_THREADS=$ncores" "VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}")
        if command -v taskset >/dev/null 2>&1; then
            CMD+=(taskset -c "${DEVS[k]}")
        elif ((k == 0)); then
            warn "taskset not found: instances are not pinned to cores"
        fi
    fi
    CMD+=(vllm serve "$MODEL" --host "$HOST" --port "${PORTS[k]}"
        --served-model-name "$SERVED_MODEL_NAME" --tensor-parallel-size "${TPS[k]}"
        --max-model-len "$MAX_MODEL_LEN" --kv-transfer-config "$(kv_config "$k")")
    ((${#EXTRA_ARGS[@]} == 0)) || CMD+=("${EXTRA_ARGS[@]}")
    if [[ "${ROLES[k]}" == prefill ]]; then
        ((${#PREFILL_ARGS[@]} == 0)) || CMD+=("${PREFILL_ARGS[@]}")
    else
        ((${#DECODE_ARGS[@]} == 0)) || CMD+=("${DECODE_ARGS[@]}")
    fi
}

build_proxy_cmd() {
    local k
    local -a phosts=() pports=() dhosts=() dports=()
    for ((k = 0; k < NUM_INSTANCES; k++)); do
        if [[ "${ROLES[k]}" == prefill ]]; then
            phosts+=("$CONNECT_HOST"); pports+=("${PORTS[k]}")
        else
            dhosts+=("$CONNECT_HOST"); dports+=("${PORTS[k]}")
        fi
    done
    if [[ "$PROXY" == toy ]]; then
        CMD=(python3 "$SCRIPT_DIR/toy_proxy_server.py")
    else
        CMD=(vllm proxy)
    fi
    CMD+=(--host "$HOST" --port "$PROXY_PORT"
        --prefiller-hosts "${phosts[@]}" --prefiller-ports "${pports[@]}"
        --decoder-hosts "${dhosts[@]}" --decoder-ports "${dports[@]}")
    # Its --api-key comes from VLLM_API_KEY, as the instances' do (see "start"), and is
    # what it sends them too: no key on a command line.
}

# Prints LABEL: CMD... with each word quoted only when the shell would need it (an API
# key is shown as ***).
print_cmd() {
    local word q="'" previous=""
    printf '  %s:' "$1"
    shift
    for word in "$@"; do
        [[ "$previous" != --instance-api-key ]] || word='***'
        previous="$word"
        if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            printf ' %s' "$word"
        else
            printf " '%s'" "${word//$q/$q\\$q$q}"
        fi
    done
    printf '\n'
}

HCCL_VARS=(HCCL_IF_IP GLOO_SOCKET_IFNAME TP_SOCKET_IFNAME HCCL_SOCKET_IFNAME
    DISAGGREGATED_PREFILL_RANK_TABLE_PATH OMP_PROC_BIND OMP_NUM_THREADS)
print_npu_env() {
    local v
    log "Ascend environment passed to every instance:"
    for v in "${HCCL_VARS[@]}"; do
        if [[ -n "${!v:-}" ]]; then log "  $v=${!v}"; else log "  $v (not set)"; fi
    done
}

log "PD deployment on $PLATFORM: $NUM_PREFILL prefill (TP=$PREFILL_TP) + $NUM_DECODE decode (TP=$DECODE_TP), model $MODEL served as '$SERVED_MODEL_NAME'"
if [[ -n "$API_KEY" ]]; then
    log "API key: required by the proxy and every instance (API_KEY)"
    # vllm serve and vllm proxy read --api-key from here, so the key stays off their command lines.
    export VLLM_API_KEY="$API_KEY"
else
    unset VLLM_API_KEY
fi
[[ "$PLATFORM" != npu ]] || print_npu_env

if [[ "$DRY_RUN" == 1 ]]; then
    log "Dry run: these commands would run (nothing is started):"
    for ((k = 0; k < NUM_INSTANCES; k++)); do
        build_instance_cmd "$k"
        print_cmd "${NAMES[k]}" "${CMD[@]}"
    done
    build_proxy_cmd
    print_cmd proxy "${CMD[@]}"
    exit 0
fi

# ---------------------------------------------------------------- start
mkdir -p "$LOG_DIR" "$(dirname "$PID_FILE")"
# Keep logs out of version control when they live inside the checkout.
[[ -e "$LOG_DIR/.gitignore" ]] || printf '*\n' >"$LOG_DIR/.gitignore"
printf '# PD deployment started %s by %s: ROLE PID KIND STARTTIME\n' "$(date '+%F %T')" "$PROG" >"$PID_FILE"

PIDS=(); LOGS=(); URLS=(); LABELS=()
STARTED_ANY=0
READY=0

# Whatever ends this script before the deployment is up (an instance that died, the
# timeout, Ctrl-C, an unexpected error) stops the processes it started.
on_exit() {
    if ((STARTED_ANY && !READY)); then
        log "Stopping what this script started..."
        bash "$SCRIPT_DIR/kill_server.sh" --pid-file "$PID_FILE" || true
    fi
}
trap on_exit EXIT
trap 'log ""; log "Interrupted."; exit 130' INT TERM

# Starts "$@" in its own session, logging to LOG, and records it in the PID file.
launch() {  # LABEL LOG CMD...
    local label="$1" logfile="$2" pid
    shift 2
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    pid=$!
    STARTED_ANY=1
    printf '%s %s group %s\n' "$label" "$pid" "$(proc_start_time "$pid")" >>"$PID_FILE"
    PIDS+=("$pid"); LOGS+=("$logfile"); LABELS+=("$label")
    log "  started $label: PID $pid, log $logfile"
}

fail() {  # MESSAGE -> exit 1 (the EXIT trap stops what was started)
    printf 'ERROR: %s\n' "$1" >&2
    exit 1
}

# Waits until the processes with positions FROM..end of PIDS answer /health.
wait_healthy() {
    local from="$1" j code rc
    local -a pending=()
    for ((j = from; j < ${#PIDS[@]}; j++)); do pending+=("$j"); done
    while ((${#pending[@]})); do
        local -a still=()
        for j in "${pending[@]}"; do
            if ! kill -0 "${PIDS[j]}" 2>/dev/null || [[ "$(ps -o stat= -p "${PIDS[j]}" 2>/dev/null)" == Z* ]]; then
                rc=0
                wait "${PIDS[j]}" 2>/dev/null || rc=$?
                {
                    printf 'ERROR: %s (PID %s) exited with status %s before it answered /health.\n' \
                        "${LABELS[j]}" "${PIDS[j]}" "$rc"
                    printf -- '----- last 30 lines of %s -----\n' "${LOGS[j]}"
                    tail -n 30 "${LOGS[j]}" || true
                    printf -- '-----\n'
                } >&2
                fail "${LABELS[j]} did not start"
            fi
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${URLS[j]}/health" || true)"
            if [[ "$code" == 200 ]]; then
                log "  ${LABELS[j]} is healthy (${URLS[j]}) after ${SECONDS}s"
            else
                still+=("$j")
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        ((${#pending[@]})) || break
        if ((SECONDS >= DEADLINE)); then
            {
                printf 'ERROR: not healthy after %ss (HEALTH_TIMEOUT):' "$HEALTH_TIMEOUT"
                for j in "${pending[@]}"; do printf ' %s' "${LABELS[j]}"; done
                printf '\n'
                for j in "${pending[@]}"; do
                    printf -- '----- last 30 lines of %s -----\n' "${LOGS[j]}"
                    tail -n 30 "${LOGS[j]}" || true
                done
            } >&2
            fail "start-up timed out"
        fi
        sleep 2
    done
}

SECONDS=0
DEADLINE=$HEALTH_TIMEOUT
log "Starting $NUM_INSTANCES instance(s); logs in $LOG_DIR"
for ((k = 0; k < NUM_INSTANCES; k++)); do
    build_instance_cmd "$k"
    launch "${NAMES[k]}" "$LOG_DIR/${NAMES[k]}.log" "${CMD[@]}"
    URLS+=("http://$URL_HOST:${PORTS[k]}")
done
log "Waiting for /health (up to ${HEALTH_TIMEOUT}s)..."
wait_healthy 0

build_proxy_cmd
launch proxy "$LOG_DIR/proxy.log" "${CMD[@]}"
URLS+=("http://$URL_HOST:$PROXY_PORT")
wait_healthy $((${#PIDS[@]} - 1))
READY=1
trap - INT TERM

PROXY_URL="http://$URL_HOST:$PROXY_PORT"
log ""
log "PD deployment is up after ${SECONDS}s."
log "  proxy URL:  $PROXY_URL  (model '$SERVED_MODEL_NAME')"
for ((k = 0; k < NUM_INSTANCES; k++)); do
    if [[ "$PLATFORM" == npu ]]; then where="NPUs ${DEVS[k]}"; else where="cores ${DEVS[k]}"; fi
    log "  ${NAMES[k]}:$(printf '%*s' $((10 - ${#NAMES[k]})) '') http://$URL_HOST:${PORTS[k]}  kv_port ${KV_PORTS[k]}  TP=${TPS[k]}  $where"
done
log "  logs:       $LOG_DIR"
log "  PID file:   $PID_FILE"
log ""
auth_hint=""
[[ -z "$API_KEY" ]] || auth_hint=" -H 'Authorization: Bearer <key>'"
log "Try it:  curl $PROXY_URL/v1/completions$auth_hint -H 'Content-Type: application/json' -d '{\"model\": \"$SERVED_MODEL_NAME\", \"prompt\": \"Who are you?\", \"max_tokens\": 32, \"temperature\": 0}'"
test_hint="bash pd_example/test_pd_online.sh"
if [[ "$PROXY_URL" != http://127.0.0.1:8000 || "${PORTS[0]}" != 8100 || "${PORTS[NUM_PREFILL]}" != 8200 ]]; then
    test_hint+=" --proxy-url $PROXY_URL --direct-url http://$URL_HOST:${PORTS[NUM_PREFILL]} --prefill-url http://$URL_HOST:${PORTS[0]}"
fi
stop_hint="bash pd_example/kill_server.sh"
[[ "$PID_FILE" == "$SCRIPT_DIR/logs/pd_pids" ]] || stop_hint+=" --pid-file $PID_FILE"
[[ -z "$API_KEY" ]] || test_hint="API_KEY=<key> $test_hint"
log "Test:    $test_hint"
log "Stop:    $stop_hint"
