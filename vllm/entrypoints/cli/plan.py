"""`vllm plan`: predict TTFT, TPOT and goodput of colocated and disaggregated layouts of
this machine for a described workload, from a short profile of the model, and recommend one.

Bad flag values end with one line and exit code 2.
"""
import argparse
import json
import math
import os
import sys

DESCRIPTION = ("Plan a deployment: profile the model's step times here (or load a saved "
               "profile), simulate the workload on colocated and xPyD layouts, and recommend "
               "the layout with the highest goodput under the TTFT and TPOT SLOs.")


def default_num_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_plan_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=None,
                        help="model folder or .gguf file (default: the demo model, or the "
                        "profile's model with --profile-file)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16",
                                                               "float16"])
    parser.add_argument("--num-cores", "--cpus", dest="num_cores", type=int,
                        default=default_num_cores(), help="cores to lay out (default: the "
                        "cores this process may use)")
    _add_workload_args(parser)
    _add_engine_args(parser)
    _add_cost_args(parser)
    parser.add_argument("--profile-file", default=None,
                        help="load step-time measurements from this JSON file instead of "
                        "profiling")
    parser.add_argument("--save-profile", default=None,
                        help="write the profile taken by this run to this JSON file")
    parser.add_argument("--output-json", default=None, help="write the plan to this file")
    return parser


def _add_workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="requests per second; inf sends them all at once")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="gamma shape of the gaps between requests; 1.0 is Poisson")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    parser.add_argument("--tpot-slo-ms", type=float, default=100.0)
    parser.add_argument("--slo-attainment", type=float, default=0.9,
                        help="share of requests that must meet both SLOs (goodput)")
    parser.add_argument("--goodput-seeds", type=int, default=3,
                        help="arrival draws averaged per rate in the goodput search")


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-instances", type=int, default=4,
                        help="most prefill (and most decode) instances in a layout")
    parser.add_argument("--max-tp", type=int, default=None,
                        help="largest tensor-parallel size tried (default: --num-cores)")


def _add_cost_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv-bytes-per-token", type=float, default=None,
                        help="KV bytes a token moves from prefill to decode (default: the "
                        "model's, 46,080 for the demo model in float32)")
    parser.add_argument("--kv-bandwidth-gbps", type=float, default=1.8,
                        help="KV transfer bandwidth, GB/s (benchmark_kv_transfer.py)")
    parser.add_argument("--pd-overhead-ms", type=float, default=60.0,
                        help="fixed cost of a disaggregated request besides the transfer "
                        "(proxy hop, ready/accept round trip)")
    parser.add_argument("--allreduce-latency-us", type=float, default=350.0,
                        help="one tensor-parallel all-reduce (benchmark_allreduce.py)")
    parser.add_argument("--allreduce-gbps", type=float, default=2.0)


def add_cli_args(subparsers) -> argparse.ArgumentParser:
    """Register `plan` on the `vllm` command's subparsers."""
    parser = subparsers.add_parser("plan", help="recommend a colocated or disaggregated "
                                   "layout for a workload", description=DESCRIPTION)
    add_plan_args(parser)
    parser.set_defaults(func=main)
    return parser


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def validate_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad flag; the dataclasses check the rest."""
    _positive(args, "num_cores", "kv_bytes_per_token", "kv_bandwidth_gbps",
              "allreduce_gbps", "goodput_seeds", "max_instances", "max_tp")
    for name in ("pd_overhead_ms", "allreduce_latency_us"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, "
                             f"got {getattr(args, name)}")
    if args.profile_file and args.save_profile:
        raise ValueError("--save-profile saves a new profile; with --profile-file "
                         "nothing is profiled")


def traffic_from_args(args: argparse.Namespace):
    """(Workload, Slos, SchedulerLimits), validated before anything slow happens."""
    from vllm.planner.recommend import SchedulerLimits
    from vllm.planner.workload import Slos, Workload
    workload = Workload(args.input_len, args.output_len, args.num_prompts, args.request_rate,
                        args.burstiness, args.max_concurrency, args.seed)
    slos = Slos(args.ttft_slo_ms / 1000, args.tpot_slo_ms / 1000, args.slo_attainment)
    return workload, slos, SchedulerLimits(args.max_num_seqs, args.max_num_batched_tokens)


def plan_inputs(args: argparse.Namespace, profile, traffic):
    from vllm.planner.instance_cost import CommCost, TransferCost
    from vllm.planner.recommend import PlanInputs
    kv_bytes = args.kv_bytes_per_token or profile.shape.kv_bytes_per_token
    transfer = TransferCost(kv_bytes, args.kv_bandwidth_gbps * 1e9, args.pd_overhead_ms / 1000)
    comm = CommCost(args.allreduce_latency_us / 1e6, args.allreduce_gbps * 1e9)
    return PlanInputs(profile, *traffic, transfer, comm, args.goodput_seeds)


def main(args: argparse.Namespace) -> int:
    """Profile (or load), simulate, print the table and the recommendation."""
    from vllm.planner.layouts import enumerate_layouts, thread_counts
    from vllm.planner.model_shape import load_model_shape
    from vllm.planner.profile import load_profile
    from vllm.planner.recommend import predict_all, recommend
    from vllm.planner.report import format_plan, plan_json
    validate_args(args)
    traffic = traffic_from_args(args)
    loaded = load_profile(args.profile_file) if args.profile_file else None
    model = _model(args, loaded)
    shape = loaded.shape if loaded else load_model_shape(model, args.dtype)
    candidates = enumerate_layouts(args.num_cores, shape, args.max_instances, args.max_tp)
    threads = thread_counts(candidates)
    profile = (_checked(loaded, threads) if loaded
               else _take_profile(args, model, shape, threads))
    inputs = plan_inputs(args, profile, traffic)
    predictions = predict_all(candidates, inputs, _log)
    best = recommend(predictions)
    print(format_plan(inputs, predictions, best))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump(plan_json(inputs, predictions, best), handle, indent=2)
            handle.write("\n")
    return 0


def _log(line: str) -> None:
    print(f"[plan] {line}", file=sys.stderr, flush=True)


def _model(args: argparse.Namespace, loaded) -> str:
    if loaded is None:
        from vllm.demo_model import demo_model_path
        return args.model or demo_model_path()
    if args.model and os.path.abspath(args.model) != os.path.abspath(loaded.model):
        raise ValueError(f"--profile-file was taken with {loaded.model}, not {args.model}")
    return loaded.model


def _checked(profile, threads: list[int]):
    for count in threads:
        profile.cost_for(count)  # a clear error when a thread count is missing
    return profile


def _take_profile(args: argparse.Namespace, model: str, shape, threads: list[int]):
    from vllm.planner.profile import plan_for_workload, run_profile
    plan = plan_for_workload(args.input_len, args.output_len, args.max_num_seqs,
                             args.max_num_batched_tokens, shape.max_model_len)
    _log(f"profiling {model} with {threads} thread(s) per rank")
    load, cores = os.getloadavg()[0], default_num_cores()
    if load > cores / 2:
        _log(f"warning: load average {load:.1f} on {cores} cores: other processes will "
             "inflate the step times; profile on a quiet machine (--save-profile) for a plan "
             "that holds")
    profile = run_profile(model, shape, threads, plan, args.dtype, _log)
    for count, measured in profile.threads.items():
        median_error, max_error = measured.fit_errors()
        _log(f"{count} thread(s): step = {measured.cost.describe()} (fit error: median "
             f"{median_error:.0%}, max {max_error:.0%})")
    if args.save_profile:
        profile.save(args.save_profile)
    return profile


def run_standalone(argv=None, prog: str = "vllm plan") -> int:
    parser = add_plan_args(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_standalone())
