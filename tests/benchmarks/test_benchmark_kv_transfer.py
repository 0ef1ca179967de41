"""The KV transfer benchmark's bytes per token: the MLA latent moved once per decode rank,
against the same heads' keys and values, and a GQA layout split by head."""
import argparse

import pytest

from benchmarks.benchmark_kv_transfer import bytes_per_token, layout_of, report_bytes


def args_for(**fields) -> argparse.Namespace:
    defaults = dict(model=None, deepseek_r1=False, layers=30, kv_heads=3, head_size=64)
    return argparse.Namespace(**{**defaults, **fields})


def test_deepseek_r1_latent_against_its_heads_as_mha(capsys):
    layout = layout_of(args_for(deepseek_r1=True))
    latent_bytes = 61 * (512 + 64) * 4  # 61 layers, kv_lora_rank + rope dim, float32
    mha_bytes = 61 * 128 * ((128 + 64) + 128) * 4  # 128 heads' keys (nope + rope), values
    assert [bytes_per_token(layout, tp) for tp in (1, 2, 8)] == \
        [latent_bytes, 2 * latent_bytes, 8 * latent_bytes]
    report_bytes(layout)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows[0] == ["1", f"{latent_bytes:,d}", f"{mha_bytes:,d}", "71.1x"]


@pytest.mark.parametrize("tp", [1, 3])
def test_gqa_heads_split_over_decode_ranks_move_once(tp):
    layout = layout_of(args_for())
    assert bytes_per_token(layout, tp) == 30 * 2 * 3 * 64 * 4
