"""Service level objectives (--goodput) and whether a request met them."""

SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(pairs: list[str] | None) -> dict[str, float]:
    """Turn ["ttft:500", "tpot:50"] into {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(
                f"invalid --goodput item {pair!r}: expected KEY:MS with KEY in {SLO_METRICS}")
        slos[name] = _non_negative_ms(pair, value)
    return slos


def _non_negative_ms(pair: str, value: str) -> float:
    try:
        milliseconds = float(value)
    except ValueError:
        raise ValueError(f"invalid --goodput value in {pair!r}: not a number") from None
    if milliseconds < 0:
        raise ValueError(f"invalid --goodput value in {pair!r}: must be >= 0")
    return milliseconds


def meets_slos(slos: dict[str, float], ttft_s: float, tpot_s: float, e2el_s: float) -> bool:
    """True when every configured objective holds for one request (times in seconds)."""
    measured_ms = {"ttft": ttft_s * 1000, "tpot": tpot_s * 1000, "e2el": e2el_s * 1000}
    return all(measured_ms[name] <= limit for name, limit in slos.items())
