"""Run one workload against colocated and disaggregated setups that share the same cores,
sweep request rates, then write the table, the plots and the summary."""
import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from typing import Optional

from vllm.benchmarks.pd_compare.report import write_report
from vllm.benchmarks.pd_compare.setups import (REPO_ROOT, ColocatedSetup, DisaggregatedSetup,
                                               ServingSetup, SetupError, shell_words)

BENCHMARK_SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "benchmark_serving.py")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/pd_vs_colocated.sh", description=__doc__)
    p.add_argument("--model", default=None, help="model folder or .gguf [the demo model]")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=192)
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--request-rate", type=float, default=4.0)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths drawn from [len * (1 - r), len * (1 + r)], as benchmark_serving")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", default=None,
                   help="core list shared by every setup, e.g. 0-1 [the cores this process may use]")
    p.add_argument("--num-prefill", type=int, default=1)
    p.add_argument("--num-decode", type=int, default=1)
    p.add_argument("--prefill-tp", type=int, default=1)
    p.add_argument("--decode-tp", type=int, default=1)
    p.add_argument("--prefill-cores", default=None,
                   help="cores of each prefill instance ('0;1' for two) [an even split]")
    p.add_argument("--decode-cores", default=None, help="the same for decode instances")
    p.add_argument("--colocated-tp", type=int, default=None,
                   help="TP of the second colocated baseline [the number of cores; 0 skips it]")
    p.add_argument("--sweep-rates", default="0.25,0.5,1",
                   help="request rates (req/s) of the goodput sweep; empty skips it")
    p.add_argument("--sweep-num-prompts", type=int, default=12)
    p.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=150.0)
    p.add_argument("--serve-args", default="--max-model-len 2048",
                   help="extra `vllm serve` flags for every instance")
    p.add_argument("--base-port", type=int, default=39200)
    p.add_argument("--result-dir", default=None,
                   help="[benchmarks/results/<date>]")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild table, plots and summary from --result-dir's raw JSON")
    args = p.parse_args(argv)
    _validate(p, args)
    return args


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("input_len", "output_len", "num_prompts", "max_concurrency", "num_prefill",
                 "num_decode", "prefill_tp", "decode_tp", "sweep_num_prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.random_range_ratio < 1:
        parser.error("--random-range-ratio must be in [0, 1)")
    if args.request_rate <= 0:
        parser.error("--request-rate must be positive (inf for all at once)")
    try:
        args.sweep_rates = [float(r) for r in args.sweep_rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--sweep-rates must be comma-separated numbers, got {args.sweep_rates!r}")
    if any(rate <= 0 for rate in args.sweep_rates):
        parser.error("--sweep-rates must be positive")
    if args.report_only and not args.result_dir:
        parser.error("--report-only needs --result-dir")
    args.cores = args.cores or _core_list(sorted(os.sched_getaffinity(0)))
    args.core_ids = _expand_cores(parser, args.cores)
    if args.colocated_tp is None:
        args.colocated_tp = len(args.core_ids) if len(args.core_ids) > 1 else 0
    if args.model is None:
        from vllm.demo_model import demo_model_path
        args.model = demo_model_path()


def _expand_cores(parser, text: str) -> list[int]:
    cores = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cores.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        parser.error(f"--cores must look like 0-3 or 0,2, got {text!r}")
    return cores


def _core_list(cores: list[int]) -> str:
    return ",".join(str(c) for c in cores)


def build_setups(args, result_dir: str) -> list[ServingSetup]:
    logs = os.path.join(result_dir, "logs")
    serve_args = shell_words(args.serve_args)
    setups: list[ServingSetup] = [ColocatedSetup(
        "colocated", f"Colocated TP=1 ({len(args.core_ids)} cores)", args.base_port, logs,
        model=args.model, cores=args.cores, num_cores=len(args.core_ids), tp=1,
        serve_args=serve_args)]
    if args.colocated_tp and args.colocated_tp > 1:
        setups.append(ColocatedSetup(
            "colocated_tp", f"Colocated TP={args.colocated_tp} ({len(args.core_ids)} cores)",
            args.base_port + 1, logs, model=args.model, cores=args.cores,
            num_cores=len(args.core_ids), tp=args.colocated_tp, serve_args=serve_args))
    setups.append(DisaggregatedSetup(
        "pd", f"PD {args.num_prefill}P{args.num_decode}D ({len(args.core_ids)} cores)",
        args.base_port + 2, logs, script_env=_pd_script_env(args, logs, serve_args)))
    return setups


def _pd_script_env(args, logs: str, serve_args: list[str]) -> dict:
    base = args.base_port
    env = {"MODEL": args.model, "NUM_PREFILL": str(args.num_prefill),
           "NUM_DECODE": str(args.num_decode), "PREFILL_TP": str(args.prefill_tp),
           "DECODE_TP": str(args.decode_tp), "DEVICES": args.cores, "HOST": "127.0.0.1",
           "PROXY_PORT": str(base + 2), "PREFILL_BASE_PORT": str(base + 10),
           "DECODE_BASE_PORT": str(base + 30), "KV_BASE_PORT": str(base + 100),
           "LOG_DIR": os.path.join(logs, "pd"), "PID_FILE": os.path.join(logs, "pd", "pids"),
           "PLATFORM": "cpu", "EXTRA_SERVE_ARGS": " ".join(serve_args)}
    if args.prefill_cores:
        env["PREFILL_DEVICES"] = args.prefill_cores
    if args.decode_cores:
        env["DECODE_DEVICES"] = args.decode_cores
    return env


def bench(args, setup: ServingSetup, path: str, num_prompts: int, rate: float,
          max_concurrency: Optional[int], seed: int) -> dict:
    """One benchmark_serving run; its saved JSON is returned and left at `path`. Each run
    against a server gets its own seed, so no run finds its prompts in the prefix cache."""
    command = [sys.executable, BENCHMARK_SCRIPT, "--backend", "vllm", "--base-url", setup.url,
               "--dataset-name", "random", "--tokenizer", args.model,
               "--random-input-len", str(args.input_len),
               "--random-output-len", str(args.output_len),
               "--random-range-ratio", str(args.random_range_ratio),
               "--num-prompts", str(num_prompts),
               "--request-rate", str(rate), "--ignore-eos", "--seed", str(seed),
               "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
               "--disable-tqdm", "--save-result", "--result-dir", os.path.dirname(path),
               "--result-filename", os.path.basename(path)]
    if max_concurrency is not None:
        command += ["--max-concurrency", str(max_concurrency)]
    with open(path[:-len(".json")] + ".txt", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SetupError(f"benchmark_serving failed against {setup.label}; see {log.name}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def run_setup(args, setup: ServingSetup, raw_dir: str, sweep: bool) -> None:
    print(f"[pd_vs_colocated] {setup.label}: starting", flush=True)
    setup.start()
    try:
        result = bench(args, setup, os.path.join(raw_dir, f"{setup.name}.json"),
                       args.num_prompts, args.request_rate, args.max_concurrency, args.seed)
        print(f"[pd_vs_colocated] {setup.label}: {result['completed']} completed, "
              f"mean TPOT {result['mean_tpot_ms']:.1f} ms, p99 ITL {result['p99_itl_ms']:.1f} "
              f"ms, {result['request_throughput']:.3f} req/s", flush=True)
        if sweep:
            os.makedirs(os.path.join(raw_dir, "sweep"), exist_ok=True)
            for index, rate in enumerate(args.sweep_rates):
                bench(args, setup, os.path.join(raw_dir, "sweep", f"{setup.name}_rate{rate:g}.json"),
                      args.sweep_num_prompts, rate, None, seed=args.seed + 1 + index)
                print(f"[pd_vs_colocated] {setup.label}: swept {rate:g} req/s", flush=True)
    finally:
        setup.stop()


def write_meta(args, result_dir: str, setups: list[ServingSetup], argv: list[str]) -> None:
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(args.core_ids),
        "model": args.model,
        "command": shlex.join(["bash", "benchmarks/pd_vs_colocated.sh", *argv]),
        "workload": {"input_len": args.input_len, "output_len": args.output_len,
                     "num_prompts": args.num_prompts, "max_concurrency": args.max_concurrency,
                     "request_rate": args.request_rate, "seed": args.seed,
                     "random_range_ratio": args.random_range_ratio},
        "setups": [{"name": s.name, "label": s.label} for s in setups],
        "sweep_setups": [s.name for s in setups if s.name in ("colocated", "pd")],
        "sweep_rates": args.sweep_rates, "sweep_num_prompts": args.sweep_num_prompts,
        "slo": {"ttft_ms": args.ttft_slo_ms, "tpot_ms": args.tpot_slo_ms},
    }
    with open(os.path.join(result_dir, "meta.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)


def machine_description(core_ids: list[int]) -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {len(core_ids)} cores used ({_core_list(core_ids)}), {platform.system()}"


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result_dir = args.result_dir or os.path.join(
        REPO_ROOT, "benchmarks", "results", datetime.date.today().isoformat())
    if not args.report_only:
        raw_dir = os.path.join(result_dir, "raw")
        os.makedirs(raw_dir, exist_ok=True)
        setups = build_setups(args, result_dir)
        write_meta(args, result_dir, setups, argv)
        try:
            for setup in setups:
                run_setup(args, setup, raw_dir, sweep=bool(args.sweep_rates)
                          and setup.name in ("colocated", "pd"))
        except SetupError as error:
            print(f"pd_vs_colocated: {error}", file=sys.stderr)
            return 1
    summary = write_report(result_dir)
    with open(os.path.join(result_dir, "table.md"), encoding="utf-8") as handle:
        print(handle.read())
    failed = {name: s["failed"] for name, s in summary["setups"].items() if s["failed"]}
    print(f"results: {result_dir}")
    if failed:
        print(f"pd_vs_colocated: failed requests: {failed}", file=sys.stderr)
        return 1
    return 0
