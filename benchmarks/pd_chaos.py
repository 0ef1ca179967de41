"""PD chaos run: streaming load through the proxy while one instance is SIGKILLed midway.

    python benchmarks/pd_chaos.py --scenario decode-kill   # or prefill-kill; --help

Starts 1 prefill (or --num-prefill) + 1 decode instance of the demo model and the proxy
on 127.0.0.1 with pd_example/disaggregated_prefill.sh, sends --num-requests streamed
completions at --concurrency, SIGKILLs the decode instance (decode-kill) or the first
prefill instance (prefill-kill) and every process under it, by PID, once --kill-after
requests have completed, and reports how each request ended, how long the requests in
flight at the kill took to end, the extra latency of requests the decode instance had
to compute itself, and the survivors' leaked KV blocks once idle. Writes a JSON.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import aiohttp
import psutil
import requests

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {"decode-kill": "decode-0", "prefill-kill": "prefill-0"}
ENDINGS = ("completed", "sse_error", "http_error", "cut", "hung")
WORDS = ("time year people way day man thing woman life child world school state family "
         "student group country problem hand part place case week company system program "
         "question work government number night point home water room mother area money "
         "story fact month lot right study book eye job word business issue side kind head "
         "house service friend father power hour game line end member law car city").split()


# ---------------------------------------------------------------- the deployment

def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(span: int) -> int:
    """A port p with p .. p + span - 1 all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - span)
        if all(_bindable(base + offset) for offset in range(span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports")


class Deployment:
    """The PD deployment of pd_example/, its PID file and logs in `out_dir`."""

    def __init__(self, out_dir: str, num_prefill: int, max_model_len: int):
        self.out_dir = out_dir
        self.num_prefill = num_prefill
        self.pid_file = os.path.join(out_dir, "pids")
        base = free_base_port(12 + 10 * (num_prefill + 1))
        self.ports = {"proxy": base, "prefill": base + 1, "decode": base + 1 + num_prefill}
        self.env = {**os.environ, "HOST": "127.0.0.1", "NUM_PREFILL": str(num_prefill),
                    "NUM_DECODE": "1", "PROXY_PORT": str(base),
                    "PREFILL_BASE_PORT": str(self.ports["prefill"]),
                    "DECODE_BASE_PORT": str(self.ports["decode"]),
                    "KV_BASE_PORT": str(base + 12), "MAX_MODEL_LEN": str(max_model_len),
                    "PID_FILE": self.pid_file, "LOG_DIR": os.path.join(out_dir, "logs")}

    def url(self, name: str) -> str:
        """Base URL of "proxy", "prefill-<i>" or "decode-0"."""
        role, _, index = name.partition("-")
        return f"http://127.0.0.1:{self.ports[role] + int(index or 0)}"

    def survivors(self, killed: str) -> list[str]:
        names = [f"prefill-{i}" for i in range(self.num_prefill)] + ["decode-0"]
        return [name for name in names if name != killed]

    def start(self) -> None:
        script = os.path.join(REPO_ROOT, "pd_example", "disaggregated_prefill.sh")
        done = subprocess.run(["bash", script], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"the deployment did not start:\n{done.stdout}\n{done.stderr}")

    def pid(self, name: str) -> int:
        with open(self.pid_file) as handle:
            for line in handle:
                fields = line.split()
                if fields and fields[0] == name:
                    return int(fields[1])
        raise KeyError(f"{name} is not in {self.pid_file}")

    def kill(self, name: str) -> None:
        """SIGKILL the instance's process and everything under it, by PID."""
        root = psutil.Process(self.pid(name))
        for process in [root, *root.children(recursive=True)]:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        script = os.path.join(REPO_ROOT, "pd_example", "kill_server.sh")
        subprocess.run(["bash", script, "--pid-file", self.pid_file], env=self.env,
                       cwd=REPO_ROOT, capture_output=True, timeout=120)


# ---------------------------------------------------------------- the load

@dataclass
class Outcome:
    """How one streamed request ended; times are seconds on the monotonic clock."""
    index: int
    start: float
    max_tokens: int
    end: Optional[float] = None
    ending: str = "hung"
    status: Optional[int] = None
    error_code: Optional[str] = None
    prompt_tokens: Optional[int] = None
    cached_tokens: Optional[int] = None

    @property
    def latency(self) -> Optional[float]:
        return None if self.end is None else self.end - self.start

    @property
    def computed_prompt(self) -> bool:
        """The decode instance computed the prompt itself (no KV came from a prefill)."""
        return (self.prompt_tokens is not None and self.cached_tokens is not None
                and self.cached_tokens < self.prompt_tokens - 1)


def prompt_text(index: int, num_words: int) -> str:
    rng = random.Random(index)
    return f"Request {index}: " + " ".join(rng.choice(WORDS) for _ in range(num_words))


def answer_length(index: int, output_len: int) -> int:
    """Varies around --output-len, so that requests are at every stage when the kill comes."""
    return random.Random(-index).randint(max(1, output_len // 2), output_len * 3 // 2)


def request_body(index: int, args: argparse.Namespace) -> dict:
    return {"model": args.model_name, "prompt": prompt_text(index, args.input_len),
            "max_tokens": answer_length(index, args.output_len), "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


def read_event(outcome: Outcome, data: bytes) -> bool:
    """Take one SSE data payload into the outcome; True when it ends the stream."""
    if data == b"[DONE]":
        outcome.ending = "completed"
        return True
    event = json.loads(data)
    if "error" in event:
        outcome.ending, outcome.error_code = "sse_error", str(event["error"].get("code"))
        return True
    usage = event.get("usage")
    if usage:
        outcome.prompt_tokens = usage["prompt_tokens"]
        outcome.cached_tokens = (usage.get("prompt_tokens_details") or {}).get(
            "cached_tokens", 0)
    return False


async def read_stream(session: aiohttp.ClientSession, url: str, body: dict,
                      outcome: Outcome) -> None:
    try:
        async with session.post(url + "/v1/completions", json=body) as response:
            outcome.status = response.status
            if response.status != 200:
                outcome.ending = "http_error"
                error = (await response.json(content_type=None)).get("error", {})
                outcome.error_code = str(error.get("code"))
                return
            outcome.ending = "cut"  # unless [DONE] or an error event arrives
            async for line in response.content:
                if line.startswith(b"data: ") and read_event(outcome, line[6:].strip()):
                    return
    except (aiohttp.ClientError, OSError, ValueError):
        if outcome.ending == "hung":
            outcome.ending = "cut"


async def one_request(session, url: str, index: int, args, outcomes: list) -> Outcome:
    outcome = Outcome(index, time.monotonic(), answer_length(index, args.output_len))
    outcomes.append(outcome)
    try:
        await asyncio.wait_for(read_stream(session, url, request_body(index, args), outcome),
                               args.hang_timeout_s)
        outcome.end = time.monotonic()
    except asyncio.TimeoutError:
        outcome.ending = "hung"
    return outcome


@dataclass
class LoadRun:
    outcomes: list[Outcome] = field(default_factory=list)
    kill_time: Optional[float] = None


async def run_load(deployment: Deployment, args: argparse.Namespace) -> LoadRun:
    """All requests at the concurrency; the kill once `kill_after` have completed."""
    run, url = LoadRun(), deployment.url("proxy")
    queue = iter(range(args.num_requests))
    completed = asyncio.Event()

    async def worker(session):
        for index in queue:
            outcome = await one_request(session, url, index, args, run.outcomes)
            done = sum(o.ending == "completed" for o in run.outcomes)
            if outcome.ending == "completed" and done >= args.kill_after:
                completed.set()

    async def killer():
        await completed.wait()
        run.kill_time = time.monotonic()
        deployment.kill(SCENARIOS[args.scenario])
        print(f"SIGKILLed {SCENARIOS[args.scenario]} after {args.kill_after} completions",
              flush=True)

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await warm_up(session, url, args)
        kill = asyncio.create_task(killer())
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        if not kill.done():
            kill.cancel()
    return run


async def warm_up(session, url: str, args) -> None:
    for index in range(2):
        await one_request(session, url, -1 - index, args, [])


# ---------------------------------------------------------------- the figures

def _metrics(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{", 1)[0]
            values[key] = values.get(key, 0.0) + float(value)
    return values


def free_blocks(url: str) -> float:
    return _metrics(url).get("vllm:num_free_kv_blocks", -1.0)


def wait_idle(url: str, idle_blocks: float, timeout_s: float) -> tuple[float, float]:
    """(free blocks once idle or at the timeout, seconds it took)."""
    started = time.monotonic()
    while True:
        values = _metrics(url)
        free = values.get("vllm:num_free_kv_blocks", -1.0)
        idle = (values.get("vllm:num_requests_running", 1) == 0
                and values.get("vllm:num_requests_waiting", 1) == 0)
        if (idle and free == idle_blocks) or time.monotonic() - started > timeout_s:
            return free, time.monotonic() - started
        time.sleep(1)


def summarize(run: LoadRun, args) -> dict:
    """Counts and timings of one run (see the module docstring)."""
    outcomes, kill = run.outcomes, run.kill_time
    counts = {ending: sum(o.ending == ending for o in outcomes) for ending in ENDINGS}
    before = [o for o in outcomes
              if o.ending == "completed" and kill is not None and o.end < kill]
    normal = statistics.median(o.latency for o in before) if before else None
    expected = normal_latency(before)
    hit = [o for o in outcomes if kill is not None and o.start < kill
           and (o.end is None or o.end > kill)]
    ends = [o.end - kill for o in hit if o.end is not None]
    recomputed = [o for o in outcomes if o.computed_prompt and o.ending == "completed"
                  and kill is not None and (o.end is None or o.end > kill)]
    extra = [o.latency - expected(o.max_tokens) for o in recomputed if expected is not None]
    return {
        "scenario": args.scenario, "killed": SCENARIOS[args.scenario],
        "kill_happened": kill is not None,
        "num_requests": len(outcomes), "counts": counts,
        "http_error_codes": _tally(o.error_code for o in outcomes if o.ending == "http_error"),
        "sse_error_codes": _tally(o.error_code for o in outcomes if o.ending == "sse_error"),
        "in_flight_at_kill": len(hit),
        "in_flight_endings": _tally(o.ending for o in hit),
        "max_end_after_kill_s": _round(max(ends, default=None)),
        "in_flight_ended_within_5s": len(ends) == len(hit) and all(t <= 5 for t in ends),
        "normal_latency_s": _round(normal),
        "recomputed_after_kill": len(recomputed),
        "max_extra_latency_recomputed_s": _round(max(extra, default=None)),
        "mean_extra_latency_recomputed_s": _round(statistics.mean(extra) if extra else None),
    }


def normal_latency(before: list[Outcome]) -> Optional[Callable[[int], float]]:
    """Latency by answer length, fitted to the completions before the kill (a straight
    line; the median when the lengths do not vary)."""
    if not before:
        return None
    try:
        fit = statistics.linear_regression([o.max_tokens for o in before],
                                           [o.latency for o in before])
    except statistics.StatisticsError:
        median = statistics.median(o.latency for o in before)
        return lambda _: median
    return lambda max_tokens: fit.intercept + fit.slope * max_tokens


def outcome_rows(run: LoadRun) -> list[dict]:
    """Each outcome with its times in seconds from the kill (negative: before it)."""
    zero = run.kill_time if run.kill_time is not None else 0.0
    rows = []
    for outcome in run.outcomes:
        row = asdict(outcome)
        row["start"] = round(outcome.start - zero, 3)
        row["end"] = None if outcome.end is None else round(outcome.end - zero, 3)
        rows.append(row)
    return rows


def _tally(values) -> dict:
    tally: dict = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return tally


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)


def leak_report(deployment: Deployment, idle: dict[str, float], killed: str,
                timeout_s: float) -> dict:
    report = {}
    for name in deployment.survivors(killed):
        free, took = wait_idle(deployment.url(name), idle[name], timeout_s)
        report[name] = {"idle_free_blocks": idle[name], "free_blocks_after": free,
                        "leaked_blocks": idle[name] - free, "seconds_to_idle": round(took, 1)}
    return report


def print_report(result: dict) -> None:
    counts = result["counts"]
    print(f"\nPD chaos, {result['scenario']} ({result['killed']} SIGKILLed), "
          f"{result['num_requests']} streamed requests:")
    for ending in ENDINGS:
        print(f"  {ending:12s} {counts[ending]}")
    if not result["kill_happened"]:
        print("  NO KILL: fewer than --kill-after completions; the run is not a chaos run")
    print(f"  in flight at the kill: {result['in_flight_at_kill']} "
          f"{result['in_flight_endings']}, last ended {result['max_end_after_kill_s']} s "
          f"after the kill")
    print(f"  normal latency {result['normal_latency_s']} s; recomputed after the kill: "
          f"{result['recomputed_after_kill']}, extra latency max "
          f"{result['max_extra_latency_recomputed_s']} s, mean "
          f"{result['mean_extra_latency_recomputed_s']} s (against a fit of latency to "
          f"answer length before the kill)")
    for name, leak in result["survivors"].items():
        print(f"  {name}: leaked KV blocks {leak['leaked_blocks']:g} "
              f"(idle {leak['idle_free_blocks']:g} free, after {leak['free_blocks_after']:g}, "
              f"idle after {leak['seconds_to_idle']} s)")


# ---------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pd_chaos.py", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="decode-kill")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=48, help="prompt words")
    parser.add_argument("--output-len", type=int, default=32,
                        help="mean tokens per answer (each draws from 0.5x to 1.5x)")
    parser.add_argument("--kill-after", type=int, default=None,
                        help="completions before the kill [num-requests / 2]")
    parser.add_argument("--num-prefill", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--hang-timeout-s", type=float, default=150.0,
                        help="a request not ended within this counts as hung")
    parser.add_argument("--idle-timeout-s", type=float, default=90.0,
                        help="how long survivors may take to free every block")
    parser.add_argument("--model-name", default=None, help="[the proxy's first model]")
    parser.add_argument("--out-dir", default=None, help="logs and JSON [a new /tmp folder]")
    parser.add_argument("--output-json", default=None, help="[OUT_DIR/pd_chaos_<scenario>.json]")
    args = parser.parse_args(argv)
    if args.kill_after is None:
        args.kill_after = args.num_requests // 2
    return args


def model_name(url: str) -> str:
    return requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def run_scenario(args: argparse.Namespace) -> dict:
    """Start, load, kill, measure, stop; returns the figures (also written as JSON)."""
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="pd-chaos.")
    deployment = Deployment(out_dir, args.num_prefill, args.max_model_len)
    killed = SCENARIOS[args.scenario]
    deployment.start()
    try:
        args.model_name = args.model_name or model_name(deployment.url("proxy"))
        idle = {name: free_blocks(deployment.url(name))
                for name in deployment.survivors(killed)}
        started = time.monotonic()
        run = asyncio.run(run_load(deployment, args))
        result = summarize(run, args)
        result["load_seconds"] = round(time.monotonic() - started, 1)
        result["survivors"] = leak_report(deployment, idle, killed, args.idle_timeout_s)
    finally:
        deployment.stop()
    result["settings"] = {k: v for k, v in vars(args).items() if k != "output_json"}
    result["outcomes"] = outcome_rows(run)
    path = args.output_json or os.path.join(out_dir, f"pd_chaos_{args.scenario}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    result["json"] = path
    return result


def main(argv=None) -> int:
    result = run_scenario(parse_args(argv))
    print_report(result)
    print(f"JSON: {result['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
