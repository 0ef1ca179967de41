"""Per-request samples from benchmark_serving's saved JSON (its vLLM field names)."""


def succeeded(result: dict) -> list[int]:
    """Indices of the requests that completed without an error."""
    errors = result.get("errors") or [""] * len(result["ttfts"])
    return [i for i, error in enumerate(errors) if not error]


def ttfts_ms(result: dict) -> list[float]:
    return [result["ttfts"][i] * 1000.0 for i in succeeded(result)]


def tpots_ms(result: dict) -> list[float]:
    """Per request: the gaps after the first token over their count. vLLM's TPOT measures
    to the end of the response instead of the last token: within 1% here."""
    values = []
    for i in succeeded(result):
        output_len = result["output_lens"][i]
        if output_len > 1:
            values.append(sum(result["itls"][i]) * 1000.0 / (output_len - 1))
    return values


def itls_ms(result: dict) -> list[float]:
    return [gap * 1000.0 for i in succeeded(result) for gap in result["itls"][i]]


def slo_attainment(result: dict, ttft_slo_ms: float, tpot_slo_ms: float) -> float:
    """Share of all requests sent (failures count as misses) that met both SLOs."""
    sent = len(result["ttfts"])
    if sent == 0:
        return 0.0
    met = 0
    for i in succeeded(result):
        output_len = result["output_lens"][i]
        tpot_ms = (sum(result["itls"][i]) * 1000.0 / (output_len - 1)
                   if output_len > 1 else 0.0)
        if result["ttfts"][i] * 1000.0 <= ttft_slo_ms and tpot_ms <= tpot_slo_ms:
            met += 1
    return met / sent
