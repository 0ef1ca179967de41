#!/usr/bin/env bash
# Check a running PD deployment (pd_example/disaggregated_prefill.sh) end to end through
# its proxy, and compare its greedy answers with a plain request to one instance.
set -euo pipefail

PROG="pd_example/test_pd_online.sh"

usage() {
    cat <<EOF
Usage: bash $PROG [OPTIONS]

Sends greedy requests (temperature 0, max_tokens MAX_TOKENS) through the PD proxy:
a completion, a streamed completion, a chat completion and a streamed chat completion;
checks each answer is non-empty and that streamed and non-streamed texts agree. Then
sends the same completion and chat straight to one instance (DIRECT_URL, default the
first decode instance) without kv_transfer_params, so that instance prefills by itself,
and checks the proxy's greedy text equals the direct one exactly. Prints PASS/FAIL per
check; exits 1 if any check fails.

  --proxy-url URL      PROXY_URL     [http://HOST:PROXY_PORT = http://127.0.0.1:8000]
  --direct-url URL     DIRECT_URL    [http://HOST:DECODE_BASE_PORT = http://127.0.0.1:8200]
  --prefill-url URL    PREFILL_URL   first prefill instance, whose /metrics shows that
                                     the proxy used it [http://HOST:PREFILL_BASE_PORT =
                                     http://127.0.0.1:8100]; "none" skips that check
  --model NAME         MODEL_NAME    [the first model of PROXY_URL/v1/models]
  --prompt TEXT        PROMPT        [The capital of France is]
  --max-tokens N       MAX_TOKENS    [32]
  --timeout SEC        REQUEST_TIMEOUT  seconds per request [300]
  --api-key KEY        API_KEY       sent as "Authorization: Bearer KEY" to the proxy and
                                     the instance (a deployment started with API_KEY)
                                     [VLLM_API_KEY, else none]
  -h, --help           show this help

HOST, PROXY_PORT, PREFILL_BASE_PORT and DECODE_BASE_PORT are read as
disaggregated_prefill.sh reads them, so the defaults match a deployment started with
the same environment. Needs curl and python3.
EOF
}

die_usage() { printf '%s: %s\nTry --help.\n' "$PROG" "$*" >&2; exit 2; }

HOST="${HOST:-127.0.0.1}"
case "$HOST" in 0.0.0.0) HOST=127.0.0.1 ;; ::) HOST="[::1]" ;; *:*) HOST="[$HOST]" ;; esac
PROXY_URL="${PROXY_URL:-http://$HOST:${PROXY_PORT:-8000}}"
DIRECT_URL="${DIRECT_URL:-http://$HOST:${DECODE_BASE_PORT:-8200}}"
PREFILL_URL="${PREFILL_URL:-http://$HOST:${PREFILL_BASE_PORT:-8100}}"
MODEL_NAME="${MODEL_NAME:-}"
PROMPT="${PROMPT:-The capital of France is}"
MAX_TOKENS="${MAX_TOKENS:-32}"
REQUEST_TIMEOUT="${REQUEST_TIMEOUT:-300}"
API_KEY="${API_KEY:-${VLLM_API_KEY:-}}"

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --*=*) opt="${1%%=*}"; val="${1#*=}"; shift ;;
        --*)
            opt="$1"
            (($# >= 2)) || die_usage "$opt needs a value"
            val="$2"; shift 2 ;;
        *) die_usage "unexpected argument '$1'" ;;
    esac
    [[ "$val" != --* ]] || die_usage "$opt needs a value"
    case "$opt" in
        --proxy-url) PROXY_URL="$val" ;;
        --direct-url) DIRECT_URL="$val" ;;
        --prefill-url) PREFILL_URL="$val" ;;
        --model) MODEL_NAME="$val" ;;
        --prompt) PROMPT="$val" ;;
        --max-tokens) MAX_TOKENS="$val" ;;
        --timeout) REQUEST_TIMEOUT="$val" ;;
        --api-key) API_KEY="$val" ;;
        *) die_usage "unknown option '$opt'" ;;
    esac
done
[[ "$MAX_TOKENS" =~ ^[1-9][0-9]*$ ]] || die_usage "MAX_TOKENS must be a positive whole number, got '$MAX_TOKENS'"
[[ "$REQUEST_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die_usage "REQUEST_TIMEOUT must be a positive whole number, got '$REQUEST_TIMEOUT'"
PROXY_URL="${PROXY_URL%/}"; DIRECT_URL="${DIRECT_URL%/}"; PREFILL_URL="${PREFILL_URL%/}"
command -v curl >/dev/null 2>&1 || { echo "ERROR: curl is required" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || { echo "ERROR: python3 is required" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pd_online.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# The key goes to curl in a header file, never on its command line.
AUTH=()
if [[ -n "$API_KEY" ]]; then
    printf 'Authorization: Bearer %s\n' "$API_KEY" >"$WORK/auth.header"
    AUTH=(-H "@$WORK/auth.header")
fi

PASSED=0
FAILED=0
FAILURES=()
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$1"); printf 'FAIL  %s\n' "$*"; }

# Python helpers; each reads its arguments from argv, never from the shell's quoting.
json_body() {  # KIND(completion|chat) STREAM(true|false) -> request JSON on stdout
    python3 - "$1" "$2" "$MODEL_NAME" "$PROMPT" "$MAX_TOKENS" <<'PY'
import json
import sys

kind, stream, model, prompt, max_tokens = sys.argv[1:6]
body = {"model": model, "max_tokens": int(max_tokens), "temperature": 0}
if kind == "chat":
    body["messages"] = [{"role": "user", "content": prompt}]
else:
    body["prompt"] = prompt
if stream == "true":
    body["stream"] = True
print(json.dumps(body))
PY
}

# Prints the generated text of a response file; exits 1 with a reason on stderr.
extract_text() {  # KIND STREAM FILE
    python3 - "$1" "$2" "$3" <<'PY'
import json
import sys

kind, stream, path = sys.argv[1:4]
raw = open(path, encoding="utf-8", errors="replace").read()


def fail(reason):
    sys.stderr.write(reason + "\n")
    sys.exit(1)


def piece(choice, streamed):
    if kind == "completion":
        return choice.get("text") or ""
    part = choice.get("delta" if streamed else "message") or {}
    return part.get("content") or ""


if stream == "true":
    text, events, done = [], 0, False
    for line in raw.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            fail(f"an SSE data line is not JSON: {data[:200]!r}")
        if "error" in event:
            fail(f"the stream carried an error: {json.dumps(event['error'])[:300]}")
        events += 1
        for choice in event.get("choices") or []:
            if choice.get("index", 0) == 0:
                text.append(piece(choice, True))
    if not events:
        fail(f"no SSE data events in the answer: {raw[:300]!r}")
    if not done:
        fail("the stream did not end with data: [DONE]")
    sys.stdout.write("".join(text))
else:
    try:
        answer = json.loads(raw)
    except ValueError:
        fail(f"the answer is not JSON: {raw[:300]!r}")
    choices = answer.get("choices") or []
    if not choices:
        fail(f"the answer has no choices: {raw[:300]!r}")
    sys.stdout.write(piece(choices[0], False))
PY
}

show() {  # TEXT -> a one-line, shortened rendering
    python3 -c 'import sys; t = sys.argv[1]; print(repr(t if len(t) <= 80 else t[:77] + "..."))' "$1"
}

# POST BODY to URL, saving the answer in FILE; prints the HTTP status ("000" if none).
post() {  # URL BODY FILE [stream]
    local -a extra=()
    [[ "${4:-}" == stream ]] && extra=(-N)
    curl -sS "${extra[@]+"${extra[@]}"}" "${AUTH[@]+"${AUTH[@]}"}" -o "$3" -w '%{http_code}' \
        --max-time "$REQUEST_TIMEOUT" -H 'Content-Type: application/json' -d "$2" "$1" \
        2>"$3.err" || true
}

# Runs one request; on success sets TEXT and returns 0, else reports FAIL and returns 1.
TEXT=""
request() {  # LABEL BASE_URL KIND STREAM
    local label="$1" base="$2" kind="$3" stream="$4" path body file code
    if [[ "$kind" == chat ]]; then path=/v1/chat/completions; else path=/v1/completions; fi
    file="$WORK/$(tr -c 'A-Za-z0-9' '_' <<<"$label").out"
    body="$(json_body "$kind" "$stream")"
    if [[ "$stream" == true ]]; then
        code="$(post "$base$path" "$body" "$file" stream)"
    else
        code="$(post "$base$path" "$body" "$file")"
    fi
    if [[ "$code" != 200 ]]; then
        local detail
        detail="$(head -c 300 "$file" 2>/dev/null || true) $(cat "$file.err" 2>/dev/null || true)"
        fail "$label: POST $base$path answered HTTP $code: ${detail//$'\n'/ }"
        return 1
    fi
    if ! TEXT="$(extract_text "$kind" "$stream" "$file" 2>"$file.why")"; then
        fail "$label: $(tr '\n' ' ' <"$file.why")"
        return 1
    fi
    if [[ -z "$TEXT" ]]; then
        fail "$label: the generated text is empty"
        return 1
    fi
    pass "$label: $(show "$TEXT")"
}

# Sum of a Prometheus counter on BASE/metrics; prints nothing if it cannot be read.
counter() {  # BASE NAME
    curl -s --max-time 10 "$1/metrics" 2>/dev/null | python3 -c '
import sys

name, total, seen = sys.argv[1], 0.0, False
for line in sys.stdin:
    if line.startswith(name + "{") or line.startswith(name + " "):
        total += float(line.rsplit(None, 1)[-1])
        seen = True
if seen:
    print(int(total))
' "$2" 2>/dev/null || true
}

echo "PD online test: proxy $PROXY_URL, direct $DIRECT_URL"

# 1. The proxy answers /health.
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$PROXY_URL/health" || true)"
if [[ "$code" == 200 ]]; then
    pass "proxy /health"
else
    fail "proxy /health answered HTTP $code (is the deployment up? bash pd_example/disaggregated_prefill.sh)"
    echo "FAILED: the proxy at $PROXY_URL is not healthy; nothing else was tried." >&2
    exit 1
fi

# 2. The model name.
if [[ -z "$MODEL_NAME" ]]; then
    models="$(curl -s --max-time 10 "${AUTH[@]+"${AUTH[@]}"}" "$PROXY_URL/v1/models" || true)"
    MODEL_NAME="$(python3 -c '
import json, sys
try:
    print(json.loads(sys.argv[1])["data"][0]["id"])
except Exception:
    pass' "$models")"
    if [[ -z "$MODEL_NAME" ]]; then
        fail "proxy /v1/models lists no model: ${models:0:300}"
        echo "FAILED: no model name; set MODEL_NAME or fix the proxy's /v1/models." >&2
        exit 1
    fi
    pass "proxy /v1/models: '$MODEL_NAME'"
fi

PREFILL_BEFORE=""
if [[ "$PREFILL_URL" != none ]]; then
    PREFILL_BEFORE="$(counter "$PREFILL_URL" "vllm:prompt_tokens_total")"
fi

# 3. Through the proxy.
PROXY_COMPLETION=""; PROXY_CHAT=""
if request "completion via proxy" "$PROXY_URL" completion false; then PROXY_COMPLETION="$TEXT"; fi
if request "completion via proxy, streamed" "$PROXY_URL" completion true; then
    if [[ -n "$PROXY_COMPLETION" ]]; then
        if [[ "$TEXT" == "$PROXY_COMPLETION" ]]; then
            pass "completion via proxy: streamed text equals the non-streamed text"
        else
            fail "completion via proxy: streamed $(show "$TEXT") differs from non-streamed $(show "$PROXY_COMPLETION")"
        fi
    fi
fi
if request "chat via proxy" "$PROXY_URL" chat false; then PROXY_CHAT="$TEXT"; fi
if request "chat via proxy, streamed" "$PROXY_URL" chat true; then
    if [[ -n "$PROXY_CHAT" ]]; then
        if [[ "$TEXT" == "$PROXY_CHAT" ]]; then
            pass "chat via proxy: streamed text equals the non-streamed text"
        else
            fail "chat via proxy: streamed $(show "$TEXT") differs from non-streamed $(show "$PROXY_CHAT")"
        fi
    fi
fi

# 4. The prefill instance saw the prompts (only where its /metrics can be read).
if [[ -n "$PREFILL_BEFORE" ]]; then
    after="$(counter "$PREFILL_URL" "vllm:prompt_tokens_total")"
    if [[ -n "$after" ]] && ((after > PREFILL_BEFORE)); then
        pass "prefill instance $PREFILL_URL prefilled the proxied prompts ($((after - PREFILL_BEFORE)) prompt tokens)"
    else
        fail "prefill instance $PREFILL_URL: vllm:prompt_tokens_total did not grow (${PREFILL_BEFORE} -> ${after:-?}); the proxy did not use it"
    fi
else
    printf 'SKIP  prefill instance metrics (%s/metrics not readable)\n' "$PREFILL_URL"
fi

# 5. Straight to one instance, no kv_transfer_params: the same greedy text.
if request "completion direct" "$DIRECT_URL" completion false && [[ -n "$PROXY_COMPLETION" ]]; then
    if [[ "$TEXT" == "$PROXY_COMPLETION" ]]; then
        pass "completion: proxy text equals direct text"
    else
        fail "completion: proxy $(show "$PROXY_COMPLETION") != direct $(show "$TEXT")"
    fi
fi
if request "chat direct" "$DIRECT_URL" chat false && [[ -n "$PROXY_CHAT" ]]; then
    if [[ "$TEXT" == "$PROXY_CHAT" ]]; then
        pass "chat: proxy text equals direct text"
    else
        fail "chat: proxy $(show "$PROXY_CHAT") != direct $(show "$TEXT")"
    fi
fi

echo
echo "$PASSED passed, $FAILED failed"
if ((FAILED)); then
    printf 'FAILED checks:\n' >&2
    printf '  - %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
echo "All PD online checks passed."
