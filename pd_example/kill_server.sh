#!/usr/bin/env bash
# Stop exactly what pd_example/disaggregated_prefill.sh started, as listed in its PID file.
# Never looks processes up by name.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="pd_example/kill_server.sh"

usage() {
    cat <<EOF
Usage: bash $PROG [OPTIONS]

Stops the processes that pd_example/disaggregated_prefill.sh started, and only those:
it reads the PID file, sends SIGTERM to every process in it that is still running,
waits up to KILL_TIMEOUT seconds, sends SIGKILL to the survivors, then removes the
PID file. Without a PID file it says so and exits 0.

  --pid-file FILE     PID_FILE       [pd_example/logs/pd_pids]
  --timeout SEC       KILL_TIMEOUT   seconds between SIGTERM and SIGKILL [30]
  -h, --help          show this help

The PID file has one line per process, "ROLE PID KIND STARTTIME" (lines starting with
# are comments). KIND "group" means the start script ran the process under setsid, so
it leads its own process group, which holds its children (API server, engine core,
tensor-parallel workers): the whole group is signalled, but only while PID still leads
a group of that number. STARTTIME (field 22 of /proc/PID/stat, "-" if unknown) guards
against a PID that the system has since given to another process: such a PID is left
alone.
EOF
}

log() { printf '%s\n' "$*"; }
die_usage() { printf '%s: %s\nTry --help.\n' "$PROG" "$*" >&2; exit 2; }

PID_FILE="${PID_FILE:-$SCRIPT_DIR/logs/pd_pids}"
KILL_TIMEOUT="${KILL_TIMEOUT:-30}"

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --pid-file) (($# >= 2)) || die_usage "--pid-file needs a value"; PID_FILE="$2"; shift 2 ;;
        --pid-file=*) PID_FILE="${1#*=}"; shift ;;
        --timeout) (($# >= 2)) || die_usage "--timeout needs a value"; KILL_TIMEOUT="$2"; shift 2 ;;
        --timeout=*) KILL_TIMEOUT="${1#*=}"; shift ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
done
[[ "$KILL_TIMEOUT" =~ ^[0-9]+$ ]] || die_usage "KILL_TIMEOUT must be a whole number of seconds, got '$KILL_TIMEOUT'"

if [[ ! -e "$PID_FILE" ]]; then
    log "No PID file at $PID_FILE: nothing to stop."
    exit 0
fi

proc_start_time() {  # PID -> field 22 of /proc/PID/stat, or "-"
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

# True when PID runs (zombies count as gone) and is the process that was recorded.
pid_alive() {  # PID START
    local state now
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]] || return 1
    if [[ "$2" != - ]]; then
        now="$(proc_start_time "$1")"
        [[ "$now" == - || "$now" == "$2" ]] || return 1
    fi
    return 0
}

# True when PID now belongs to a process other than the one recorded (start time differs).
pid_reused() {  # PID START
    local now
    [[ "$2" != - ]] || return 1
    ps -o pid= -p "$1" >/dev/null 2>&1 || return 1
    now="$(proc_start_time "$1")"
    [[ "$now" != - && "$now" != "$2" ]]
}

# True while any process of group PGID other than zombies exists.
group_alive() {  # PGID
    ps -e -o pgid=,stat= 2>/dev/null | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

leads_group() {  # PID -> its process group is its own
    local pgid
    pgid="$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ')" || return 1
    [[ "$pgid" == "$1" ]]
}

# The entries, newest first (the proxy goes before the instances it forwards to).
ROLES=(); PIDS=(); GROUP=()
while read -r role pid kind start _rest; do
    [[ -z "${role:-}" || "$role" == \#* ]] && continue
    if [[ ! "${pid:-}" =~ ^[0-9]+$ ]] || ((pid <= 1)); then
        log "Skipping a malformed line for '$role' in $PID_FILE."
        continue
    fi
    start="${start:--}"
    is_group=0
    if pid_alive "$pid" "$start"; then
        if [[ "${kind:-}" == group ]] && leads_group "$pid"; then is_group=1; fi
    elif [[ "${kind:-}" == group ]] && ! pid_reused "$pid" "$start" && group_alive "$pid"; then
        # The leader is gone but processes it started still hold its group (a group
        # number is never handed out again while the group exists).
        log "$role (PID $pid) has exited, but its process group still has members."
        is_group=1
    else
        log "$role (PID $pid) is not running."
        continue
    fi
    ROLES=("$role" "${ROLES[@]+"${ROLES[@]}"}")
    PIDS=("$pid" "${PIDS[@]+"${PIDS[@]}"}")
    GROUP=("$is_group" "${GROUP[@]+"${GROUP[@]}"}")
done <"$PID_FILE"

# Whether entry J still has something running.
entry_alive() {
    local j="$1"
    if ((GROUP[j])); then group_alive "${PIDS[j]}"; else pid_alive "${PIDS[j]}" -; fi
}

signal_entry() {  # SIGNAL J
    local sig="$1" j="$2"
    if ((GROUP[j])); then
        kill "-$sig" -- "-${PIDS[j]}" 2>/dev/null || true
    else
        kill "-$sig" "${PIDS[j]}" 2>/dev/null || true
    fi
}

describe() {  # J
    if ((GROUP[$1])); then printf '%s (process group %s)' "${ROLES[$1]}" "${PIDS[$1]}"
    else printf '%s (PID %s)' "${ROLES[$1]}" "${PIDS[$1]}"; fi
}

n=${#PIDS[@]}
if ((n == 0)); then
    log "Nothing in $PID_FILE is still running."
    rm -f "$PID_FILE"
    exit 0
fi

for ((j = 0; j < n; j++)); do
    log "SIGTERM -> $(describe "$j")"
    signal_entry TERM "$j"
done

# Wait for a graceful exit, polling twice a second.
deadline=$((SECONDS + KILL_TIMEOUT))
while :; do
    left=()
    for ((j = 0; j < n; j++)); do
        if entry_alive "$j"; then left+=("$j"); fi
    done
    ((${#left[@]})) || break
    ((SECONDS < deadline)) || break
    sleep 0.5
done

if ((${#left[@]})); then
    for j in "${left[@]}"; do
        log "Still running after ${KILL_TIMEOUT}s: SIGKILL -> $(describe "$j")"
        signal_entry KILL "$j"
    done
    sleep 1
    stuck=()
    for j in "${left[@]}"; do
        if entry_alive "$j"; then stuck+=("$(describe "$j")"); fi
    done
    if ((${#stuck[@]})); then
        printf 'ERROR: still running after SIGKILL: %s. Keeping %s.\n' "${stuck[*]}" "$PID_FILE" >&2
        exit 1
    fi
fi

rm -f "$PID_FILE"
log "Stopped $n process(es); removed $PID_FILE."
