"""The pd_example/ shell scripts: help texts, argument checks, refusals, the PID file and
kill_server.sh, and the start/check/stop cycle against a fake `vllm` executable (a tiny
HTTP server put first on PATH, so no model server is ever started here)."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PD = REPO / "pd_example"
START = PD / "disaggregated_prefill.sh"
TEST = PD / "test_pd_online.sh"
KILL = PD / "kill_server.sh"
RANKTABLE = PD / "gen_ranktable.sh"
SCRIPTS = [START, TEST, KILL, RANKTABLE]

# Stands in for the `vllm` console script: `serve` answers like an instance, `proxy`
# forwards to the first prefiller, then relays the first decoder's answer.
FAKE_VLLM = r'''
import http.server
import json
import os
import sys
import threading
import time
import urllib.request

argv = sys.argv[1:]
if argv[:1] == ["demo-model"]:
    print("/fake/models/FakeDemo.gguf")
    sys.exit(0)


def value(flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def values(flag):
    out = []
    for word in argv[argv.index(flag) + 1:] if flag in argv else []:
        if word.startswith("--"):
            break
        out.append(word)
    return out


if argv[0] == "proxy":
    role = "proxy"
else:
    kv = json.loads(value("--kv-transfer-config", "{}"))
    role = "decode" if kv.get("kv_role") == "kv_consumer" else "prefill"
port = int(value("--port"))
record_dir = os.environ.get("FAKE_VLLM_RECORD")
if record_dir:
    with open(os.path.join(record_dir, f"{role}-{port}.json"), "w") as f:
        json.dump({"argv": argv, "pid": os.getpid(), "pgid": os.getpgid(0),
                   "affinity": sorted(os.sched_getaffinity(0)),
                   "env": {k: os.environ.get(k) for k in (
                       "OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE",
                       "ASCEND_RT_VISIBLE_DEVICES")}}, f)
if os.environ.get("FAKE_VLLM_FAIL") == role:
    for i in range(40):
        print(f"fake {role} log line {i}")
    print("fake failure: the model cannot be loaded", flush=True)
    sys.exit(3)
if os.environ.get("FAKE_VLLM_HANG") == role:
    time.sleep(3600)

name = value("--served-model-name", "fake-model")
text = os.environ.get("FAKE_VLLM_TEXT", " Paris, the city of light.")
prompt_tokens = 0
lock = threading.Lock()


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=30)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, payload, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, b"", "text/plain")
        elif self.path == "/v1/models" and role == "proxy":
            decode = f"http://{values('--decoder-hosts')[0]}:{values('--decoder-ports')[0]}"
            with urllib.request.urlopen(decode + self.path, timeout=30) as answer:
                self.reply(200, answer.read())
        elif self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
        elif self.path == "/metrics" and role != "proxy":
            page = f'vllm:prompt_tokens_total{{model_name="{name}"}} {prompt_tokens}.0\n'
            self.reply(200, page.encode(), "text/plain")
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        global prompt_tokens
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if role == "proxy":
            prefill = f"http://{values('--prefiller-hosts')[0]}:{values('--prefiller-ports')[0]}"
            decode = f"http://{values('--decoder-hosts')[0]}:{values('--decoder-ports')[0]}"
            first = dict(body, max_tokens=1, stream=False,
                         kv_transfer_params={"do_remote_decode": True})
            post(prefill + self.path, first).read()
            second = dict(body, kv_transfer_params={"do_remote_prefill": True})
            with post(decode + self.path, second) as answer:
                self.reply(answer.status, answer.read(), answer.headers["Content-Type"])
            return
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with lock:
            prompt_tokens += len(prompt.split())
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}}
                      if chat else {"index": 0, "text": text})
            self.reply(200, {"choices": [choice]})
            return
        events = []
        for start in range(0, len(text), 4):
            piece = text[start:start + 4]
            choice = {"index": 0, "delta": {"content": piece}} if chat else {
                "index": 0, "text": piece}
            events.append("data: " + json.dumps({"choices": [choice]}) + "\n\n")
        events.append("data: [DONE]\n\n")
        self.reply(200, "".join(events).encode(), "text/event-stream")


server = http.server.ThreadingHTTPServer((value("--host", "127.0.0.1"), port), Handler)
print(f"fake {role} listening on {port}", flush=True)
server.serve_forever()
'''


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "vllm"
    fake.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    fake.chmod(0o755)
    return folder


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports() -> dict:
    """Base ports whose every derived port is free right now."""
    while True:
        base = random.randrange(20000, 60000, 100)
        ports = {"PROXY_PORT": base, "PREFILL_BASE_PORT": base + 10,
                 "DECODE_BASE_PORT": base + 20, "KV_BASE_PORT": base + 40}
        needed = [base, base + 10, base + 11, base + 20, base + 21]
        needed += [base + 40 + 10 * k + j for k in range(3) for j in range(2)]
        if all(port_free(p) for p in needed):
            return {k: str(v) for k, v in ports.items()}


@pytest.fixture
def deploy_env(tmp_path, fake_bin) -> dict:
    """Environment for the scripts: fake vllm first on PATH, private log dir and ports."""
    env = dict(os.environ)
    for name in ("MODEL", "SERVED_MODEL_NAME", "NUM_PREFILL", "NUM_DECODE", "PREFILL_TP",
                 "DECODE_TP", "HOST", "DEVICES", "PREFILL_DEVICES", "DECODE_DEVICES",
                 "EXTRA_SERVE_ARGS", "PREFILL_SERVE_ARGS", "DECODE_SERVE_ARGS", "PROXY",
                 "PLATFORM", "VLLM_CPU_KVCACHE_SPACE", "DRY_RUN", "PROXY_URL", "DIRECT_URL",
                 "PREFILL_URL", "MODEL_NAME", "KV_CONNECTOR", "HEALTH_TIMEOUT"):
        env.pop(name, None)
    env.update(pick_ports())
    cores = sorted(os.sched_getaffinity(0))
    env.update({
        "PATH": f"{fake_bin}{os.pathsep}{env.get('PATH', '')}",
        "PLATFORM": "cpu",
        "MODEL": "/fake/models/FakeModel",
        "DEVICES": ",".join(str(c) for c in cores[:2]),
        "LOG_DIR": str(tmp_path / "logs"),
        "PID_FILE": str(tmp_path / "logs" / "pd_pids"),
        "FAKE_VLLM_RECORD": str(tmp_path),
        "HEALTH_TIMEOUT": "60",
    })
    return env


def run(script, args=(), env=None, timeout=120):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env=env if env is not None else dict(os.environ), timeout=timeout)


def start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(") ", 1)[1].split()[19]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# ------------------------------------------------------------------- every script
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0(script, flag):
    result = run(script, [flag])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: bash pd_example/" + script.name)
    assert result.stderr == ""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", [START, TEST, KILL], ids=lambda p: p.name)
def test_unknown_option_is_refused(script, deploy_env):
    result = run(script, ["--no-such-option", "1"], deploy_env)
    assert result.returncode == 2
    assert "no-such-option" in result.stderr and "--help" in result.stderr


# ------------------------------------------------------------------- kill_server.sh
def test_kill_server_without_pid_file(tmp_path):
    result = run(KILL, ["--pid-file", str(tmp_path / "absent")])
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_kill_server_stops_only_what_the_pid_file_names(tmp_path):
    ours = subprocess.Popen(["sleep", "1000"], start_new_session=True)  # like setsid
    other = subprocess.Popen(["sleep", "1000"])
    try:
        pid_file = tmp_path / "pd_pids"
        pid_file.write_text(f"# ROLE PID KIND STARTTIME\n"
                            f"decode-0 {ours.pid} group {start_time(ours.pid)}\n")
        result = run(KILL, ["--pid-file", str(pid_file)])
        assert result.returncode == 0, result.stderr
        assert f"process group {ours.pid}" in result.stdout
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None, "kill_server.sh stopped a process it was not given"
        assert not pid_file.exists()
    finally:
        stop(ours)
        stop(other)


def test_kill_server_stops_the_whole_group(tmp_path):
    """A group leader's children (an engine core, TP workers) go with it."""
    leader = subprocess.Popen(["bash", "-c", "sleep 1000 & echo $!; wait"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        pid_file = tmp_path / "pd_pids"
        pid_file.write_text(f"prefill-0 {leader.pid} group {start_time(leader.pid)}\n")
        result = run(KILL, ["--pid-file", str(pid_file)])
        assert result.returncode == 0, result.stderr
        leader.wait(timeout=10)
        assert wait_gone(child), "the leader's child survived"
    finally:
        stop(leader)


def test_kill_server_leaves_a_reused_pid_alone(tmp_path):
    other = subprocess.Popen(["sleep", "1000"])
    try:
        pid_file = tmp_path / "pd_pids"
        recorded = int(start_time(other.pid)) - 5  # another process had this PID before
        pid_file.write_text(f"proxy {other.pid} group {recorded}\n")
        result = run(KILL, ["--pid-file", str(pid_file)])
        assert result.returncode == 0, result.stderr
        assert "not running" in result.stdout
        time.sleep(0.2)
        assert other.poll() is None
        assert not pid_file.exists()
    finally:
        stop(other)


def test_kill_server_sigkills_after_the_timeout(tmp_path):
    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 1000"],
                                start_new_session=True)
    try:
        time.sleep(0.3)  # let the trap be set
        pid_file = tmp_path / "pd_pids"
        pid_file.write_text(f"decode-0 {stubborn.pid} group -\n")
        result = run(KILL, ["--pid-file", str(pid_file), "--timeout", "1"])
        assert result.returncode == 0, result.stderr
        assert "SIGKILL" in result.stdout
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(stubborn)


# ------------------------------------------------------------------- refusals
def test_start_refuses_a_busy_port(deploy_env, tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", int(deploy_env["PROXY_PORT"])))
    holder.listen()
    try:
        result = run(START, [], deploy_env, timeout=60)
    finally:
        holder.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refusing to start" in result.stderr
    assert f"{deploy_env['PROXY_PORT']} (proxy)" in result.stderr
    assert not list(tmp_path.glob("*-*.json")), "something was started"
    assert not Path(deploy_env["PID_FILE"]).exists()


def test_start_refuses_a_busy_kv_port(deploy_env, tmp_path):
    holder = socket.socket()
    kv_plus_one = int(deploy_env["KV_BASE_PORT"]) + 11  # decode-0's kv_port + 1
    holder.bind(("127.0.0.1", kv_plus_one))
    holder.listen()
    try:
        result = run(START, ["--dry-run"], deploy_env, timeout=60)
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"{kv_plus_one} (decode-0 (kv_port+1))" in result.stderr


def test_start_refuses_a_live_pid_file(deploy_env, tmp_path):
    running = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        pid_file = Path(deploy_env["PID_FILE"])
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"decode-0 {running.pid} group {start_time(running.pid)}\n")
        result = run(START, [], deploy_env, timeout=60)
        assert result.returncode == 1
        assert "refusing to start" in result.stderr and "still running" in result.stderr
        assert f"decode-0={running.pid}" in result.stderr
        assert "kill_server.sh" in result.stderr
        assert running.poll() is None
        assert pid_file.exists()
        assert not list(tmp_path.glob("*-*.json")), "something was started"
    finally:
        stop(running)


def test_start_treats_a_dead_pid_file_as_stale(deploy_env):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = Path(deploy_env["PID_FILE"])
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"decode-0 {gone.pid} group -\n")
    result = run(START, ["--dry-run"], deploy_env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_start_refuses_ports_chosen_twice(deploy_env):
    env = dict(deploy_env, DECODE_BASE_PORT=deploy_env["PREFILL_BASE_PORT"])
    result = run(START, ["--dry-run"], env)
    assert result.returncode == 2
    assert "chosen twice" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--num-prefill", "0"], "NUM_PREFILL must be at least 1"),
    (["--decode-tp", "two"], "DECODE_TP must be a whole number"),
    (["--proxy-port", "70000"], "PROXY_PORT must be at most 65535"),
    (["--platform", "tpu"], "PLATFORM must be auto, cpu or npu"),
    (["--proxy", "nginx"], "PROXY must be vllm or toy"),
    (["--decode-devices", "0;1"], "DECODE_DEVICES lists 2 instance(s) but NUM_DECODE is 1"),
    (["--prefill-devices", "x"], "bad PREFILL_DEVICES entry"),
    (["--model"], "--model needs a value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_start_bad_arguments(deploy_env, args, message):
    result = run(START, [*args, "--dry-run"], deploy_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


# ------------------------------------------------------------------- the plan (--dry-run)
def plan(result) -> dict:
    lines = {}
    for line in result.stdout.splitlines():
        label, _, command = line.strip().partition(": ")
        if label in ("prefill-0", "prefill-1", "decode-0", "decode-1", "proxy"):
            lines[label] = command
    return lines


def test_dry_run_cpu_default_layout(deploy_env):
    env = dict(deploy_env, DEVICES="0-1")
    env.pop("MODEL")
    result = run(START, ["--dry-run"], env)
    assert result.returncode == 0, result.stderr
    commands = plan(result)
    kv = int(env["KV_BASE_PORT"])
    prefill, decode, proxy = commands["prefill-0"], commands["decode-0"], commands["proxy"]
    assert "OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 taskset -c 0 vllm serve" in prefill
    assert "OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 taskset -c 1 vllm serve" in decode
    assert "/fake/models/FakeDemo.gguf" in prefill  # MODEL unset: `vllm demo-model`
    assert "--served-model-name FakeDemo " in prefill
    assert (f'{{"kv_connector":"PushConnector","kv_role":"kv_producer","kv_ip":"127.0.0.1",'
            f'"kv_port":{kv},"engine_id":"prefill-0"}}') in prefill
    assert (f'"kv_role":"kv_consumer","kv_ip":"127.0.0.1","kv_port":{kv + 10},'
            f'"engine_id":"decode-0"') in decode
    assert f"--port {env['PREFILL_BASE_PORT']} " in prefill
    assert "--tensor-parallel-size 1 --max-model-len 2048" in decode
    assert "kv_buffer_device" not in prefill
    assert proxy == (f"vllm proxy --host 127.0.0.1 --port {env['PROXY_PORT']} "
                     f"--prefiller-hosts 127.0.0.1 --prefiller-ports {env['PREFILL_BASE_PORT']} "
                     f"--decoder-hosts 127.0.0.1 --decoder-ports {env['DECODE_BASE_PORT']}")


def test_dry_run_npu_default_layout(deploy_env):
    env = dict(deploy_env, PLATFORM="npu", HCCL_IF_IP="172.19.32.175",
               GLOO_SOCKET_IFNAME="eth0")
    env.pop("DEVICES")
    env.pop("HCCL_SOCKET_IFNAME", None)
    result = run(START, ["--dry-run"], env)
    assert result.returncode == 0, result.stderr
    commands = plan(result)
    assert commands["prefill-0"].startswith("env ASCEND_RT_VISIBLE_DEVICES=0,1,2,3 vllm serve")
    assert commands["decode-0"].startswith("env ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 vllm serve")
    for name in ("prefill-0", "decode-0"):
        assert "--tensor-parallel-size 4" in commands[name]
        assert '"kv_buffer_device":"npu"' in commands[name]
        assert "taskset" not in commands[name]
    assert "HCCL_IF_IP=172.19.32.175" in result.stdout
    assert "GLOO_SOCKET_IFNAME=eth0" in result.stdout
    assert "HCCL_SOCKET_IFNAME (not set)" in result.stdout


def test_dry_run_npu_not_enough_devices(deploy_env):
    env = dict(deploy_env, PLATFORM="npu", DEVICES="0-5")
    result = run(START, ["--dry-run"], env)
    assert result.returncode == 1
    assert "not enough NPUs" in result.stderr


def test_dry_run_settings_by_flag_and_env(deploy_env):
    extra = "--seed 1024 --additional-config '{\"chunked_prefill_for_mla\": true}'"
    env = dict(deploy_env, DEVICES="0-5", VLLM_CPU_KVCACHE_SPACE="3", EXTRA_SERVE_ARGS=extra,
               DECODE_SERVE_ARGS="--max-num-batched-tokens 256", SERVED_MODEL_NAME="env-name")
    result = run(START, ["--dry-run", "--num-decode", "2", "--served-model-name=flag-name",
                         "--proxy", "toy"], env)
    assert result.returncode == 0, result.stderr
    commands = plan(result)
    assert "taskset -c 0,1 " in commands["prefill-0"]
    assert "taskset -c 2,3 " in commands["decode-0"]
    assert "taskset -c 4,5 " in commands["decode-1"]
    assert "OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=3 " in commands["decode-1"]
    assert "--served-model-name flag-name " in commands["decode-1"]
    assert "--seed 1024 --additional-config '{\"chunked_prefill_for_mla\": true}'" in (
        commands["prefill-0"])
    assert "--max-num-batched-tokens 256" in commands["decode-1"]
    assert "--max-num-batched-tokens" not in commands["prefill-0"]
    assert '"engine_id":"decode-1"' in commands["decode-1"]
    assert f'"kv_port":{int(env["KV_BASE_PORT"]) + 20}' in commands["decode-1"]
    assert commands["proxy"].startswith("python3 ")
    assert "toy_proxy_server.py" in commands["proxy"]
    assert (f"--decoder-ports {env['DECODE_BASE_PORT']} {int(env['DECODE_BASE_PORT']) + 1}"
            in commands["proxy"])


def test_dry_run_role_device_lists(deploy_env):
    env = dict(deploy_env, DEVICES="0-7", PREFILL_DEVICES="6,7", NUM_DECODE="2")
    result = run(START, ["--dry-run"], env)
    assert result.returncode == 0, result.stderr
    commands = plan(result)
    assert "taskset -c 6,7 " in commands["prefill-0"]
    # the decodes share what is left of the pool
    assert "taskset -c 0,1,2 " in commands["decode-0"]
    assert "taskset -c 3,4,5 " in commands["decode-1"]


# ------------------------------------------------------------------- start, test, stop
def read_pid_file(path: Path) -> list:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(line.split())
    return rows


def test_start_check_and_stop_with_a_fake_vllm(deploy_env, tmp_path):
    result = run(START, [], deploy_env, timeout=120)
    pid_file = Path(deploy_env["PID_FILE"])
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        proxy_url = f"http://127.0.0.1:{deploy_env['PROXY_PORT']}"
        assert f"proxy URL:  {proxy_url}" in result.stdout
        assert deploy_env["LOG_DIR"] in result.stdout and str(pid_file) in result.stdout
        # the hints carry the non-default settings
        assert f"bash pd_example/kill_server.sh --pid-file {pid_file}" in result.stdout
        assert f"bash pd_example/test_pd_online.sh --proxy-url {proxy_url}" in result.stdout
        rows = read_pid_file(pid_file)
        assert [row[0] for row in rows] == ["prefill-0", "decode-0", "proxy"]
        for role, pid, kind, started in rows:
            assert kind == "group" and alive(int(pid))
            assert started == start_time(int(pid))
            assert os.getpgid(int(pid)) == int(pid)  # setsid: leads its own group
        records = {p.name.split("-")[0]: json.loads(p.read_text())
                   for p in tmp_path.glob("*-*.json")}
        cores = [int(c) for c in deploy_env["DEVICES"].split(",")]
        assert records["prefill"]["affinity"] == cores[:1]
        assert records["decode"]["affinity"] == cores[1:2] or len(cores) == 1
        assert records["decode"]["env"]["OMP_NUM_THREADS"] == "1"
        assert records["decode"]["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
        for role in ("prefill-0", "decode-0", "proxy"):
            assert (Path(deploy_env["LOG_DIR"]) / f"{role}.log").exists()

        # a second start is refused while this one runs
        again = run(START, [], deploy_env, timeout=60)
        assert again.returncode == 1 and "refusing to start" in again.stderr

        # test_pd_online.sh passes against it (defaults from the same environment)
        check = run(TEST, [], deploy_env, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "FAIL" not in check.stdout
        for label in ("completion via proxy:", "completion via proxy, streamed:",
                      "chat via proxy:", "chat via proxy, streamed:",
                      "completion: proxy text equals direct text",
                      "chat: proxy text equals direct text",
                      f"prefill instance http://127.0.0.1:{deploy_env['PREFILL_BASE_PORT']} "
                      "prefilled the proxied prompts", "proxy /v1/models: 'FakeModel'"):
            assert f"PASS  {label}" in check.stdout, check.stdout

        # an instance that answers differently makes it fail
        other_port = pick_ports()["PROXY_PORT"]
        odd = subprocess.Popen(
            [str(Path(deploy_env["PATH"].split(os.pathsep)[0]) / "vllm"), "serve", "--host",
             "127.0.0.1", "--port", other_port, "--kv-transfer-config",
             '{"kv_role": "kv_consumer"}'],
            env=dict(deploy_env, FAKE_VLLM_TEXT=" Lyon.", FAKE_VLLM_RECORD=""),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while port_free(int(other_port)) and time.monotonic() < deadline:
                time.sleep(0.1)
            bad = run(TEST, ["--direct-url", f"http://127.0.0.1:{other_port}"], deploy_env)
        finally:
            stop(odd)
        assert bad.returncode == 1
        assert "FAIL  completion: proxy ' Paris, the city of light.' != direct ' Lyon.'" in (
            bad.stdout)
        assert "2 failed" in bad.stdout
    finally:
        stopped = run(KILL, ["--pid-file", str(pid_file)], deploy_env, timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not pid_file.exists()
    for _, pid, _, _ in rows:
        assert wait_gone(int(pid))


def test_start_reports_an_instance_that_dies(deploy_env, tmp_path):
    env = dict(deploy_env, FAKE_VLLM_FAIL="decode")
    result = run(START, [], env, timeout=120)
    assert result.returncode == 1
    assert "decode-0" in result.stderr and "exited with status 3" in result.stderr
    assert "last 30 lines" in result.stderr
    assert "fake failure: the model cannot be loaded" in result.stderr
    # 41 lines were logged: the last 30 start at line 11
    assert "fake decode log line 11\n" in result.stderr
    assert "fake decode log line 10\n" not in result.stderr
    prefill = json.loads(next(tmp_path.glob("prefill-*.json")).read_text())
    assert wait_gone(prefill["pid"]), "the prefill instance was left running"
    assert not Path(env["PID_FILE"]).exists()


def test_start_times_out(deploy_env, tmp_path):
    env = dict(deploy_env, FAKE_VLLM_HANG="prefill", HEALTH_TIMEOUT="3")
    result = run(START, [], env, timeout=120)
    assert result.returncode == 1
    assert "not healthy after 3s" in result.stderr and "prefill-0" in result.stderr
    for record in tmp_path.glob("*-*.json"):
        assert wait_gone(json.loads(record.read_text())["pid"])
    assert not Path(env["PID_FILE"]).exists()


def test_online_test_reports_a_proxy_that_is_down(deploy_env):
    result = run(TEST, ["--timeout", "5"], deploy_env)
    assert result.returncode == 1
    assert "FAIL  proxy /health" in result.stdout


def test_start_stops_everything_when_interrupted(deploy_env, tmp_path):
    env = dict(deploy_env, FAKE_VLLM_HANG="decode")
    starter = subprocess.Popen(["bash", str(START)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        pid_file = Path(env["PID_FILE"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pid_file.exists() and len(read_pid_file(pid_file)) == 2:
                break
            time.sleep(0.2)
        rows = read_pid_file(pid_file)
        assert len(rows) == 2
        time.sleep(1)
        starter.send_signal(signal.SIGTERM)
        out, err = starter.communicate(timeout=60)
    finally:
        stop(starter)
    assert starter.returncode == 130, out + err
    assert "Interrupted" in out
    for _, pid, _, _ in rows:
        assert wait_gone(int(pid))
    assert not pid_file.exists()
