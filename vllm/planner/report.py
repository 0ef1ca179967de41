"""The plan as a table and as JSON."""
import math
from typing import Optional

from vllm.planner.recommend import PlanInputs, Prediction

COLUMNS = ("layout", "mean TTFT", "p99 TTFT", "mean TPOT", "p99 ITL", "req/s", "out tok/s",
           "SLO met", "goodput")


def _row(prediction: Prediction) -> list[str]:
    s, g = prediction.summary, prediction.goodput
    goodput = f"{g.rate:.2f} req/s" if g.bounded else f">= {g.rate:.0f} req/s"
    return [prediction.layout.name, f"{s.mean_ttft_ms:,.0f} ms", f"{s.p99_ttft_ms:,.0f} ms",
            f"{s.mean_tpot_ms:,.1f} ms", f"{s.p99_itl_ms:,.1f} ms",
            f"{s.request_throughput:.2f}", f"{s.output_throughput:.1f}",
            f"{s.slo_attainment:.0%}", goodput]


def format_table(predictions: list[Prediction]) -> str:
    """A Markdown table of the layouts that can run; the others listed below it."""
    rows = [_row(p) for p in predictions if p.summary is not None]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [f"(not possible: {p.layout.name}: {p.problem})"
              for p in predictions if p.problem]
    return "\n".join(lines)


def format_plan(inputs: PlanInputs, predictions: list[Prediction],
                best: Optional[Prediction]) -> str:
    w, slos = inputs.workload, inputs.slos
    header = (f"Workload: {w.num_prompts} prompts, {w.input_len} in / {w.output_len} out, "
              f"request rate {w.request_rate}, burstiness {w.burstiness}, max concurrency "
              f"{w.max_concurrency}; SLOs TTFT {slos.ttft_s * 1000:.0f} ms, TPOT "
              f"{slos.tpot_s * 1000:.0f} ms, goodput = highest Poisson rate with "
              f">= {slos.attainment:.0%} of requests meeting both")
    verdict = (f"Recommended: {best.layout.name} (goodput {best.goodput.rate:.2f} req/s, "
               f"mean TPOT {best.summary.mean_tpot_ms:.1f} ms)" if best
               else "No layout can run this model here.")
    if best and best.goodput.rate == 0:
        verdict += "; no layout meets the SLOs even at a trickle of requests"
    return "\n".join([header, "", format_table(predictions), "", verdict])


def plan_json(inputs: PlanInputs, predictions: list[Prediction],
              best: Optional[Prediction]) -> dict:
    w = inputs.workload
    return {"workload": {"input_len": w.input_len, "output_len": w.output_len,
                         "num_prompts": w.num_prompts,
                         "request_rate": _finite_or_text(w.request_rate),
                         "burstiness": w.burstiness, "max_concurrency": w.max_concurrency,
                         "seed": w.seed},
            "slos": {"ttft_ms": inputs.slos.ttft_s * 1000,
                     "tpot_ms": inputs.slos.tpot_s * 1000,
                     "attainment": inputs.slos.attainment},
            "limits": {"max_num_seqs": inputs.limits.max_num_seqs,
                       "max_num_batched_tokens": inputs.limits.max_num_batched_tokens},
            "transfer": inputs.transfer.to_json(), "comm": inputs.comm.to_json(),
            "profile": {"model": inputs.profile.model,
                        "load_average": inputs.profile.load_average,
                        "costs": {t: p.cost.to_json()
                                  for t, p in inputs.profile.threads.items()}},
            "layouts": [p.to_json() for p in predictions],
            "recommended": best.layout.name if best else None}


def _finite_or_text(value: float):
    return value if math.isfinite(value) else str(value)
