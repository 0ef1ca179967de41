"""GGUF block weights: the reference dequantisation, the small-batch kernel, loading
blocks through the parallel layers' loaders, and the demo model on its blocks."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vllm.distributed.parallel_state import init_tensor_parallel
from vllm.model_executor.layers.gguf_blocks import (
    BLOCK_BYTES, GGML_Q4_1, GGML_Q8_0, BlockMatrix, PackedLinear, dequantize,
    packed_or_dense_linear)
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear)
from vllm.model_executor.layers.panel_weights import PanelLinear, attach_panels, pack_panels
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead, VocabParallelEmbedding)
from vllm.platforms import cpu_isa
from vllm.platforms.cpu import GGUF_KERNEL_MAX_TOKENS, CpuPlatform

QTYPES = [GGML_Q4_1, GGML_Q8_0]
BUILT_ISAS = cpu_isa.built_isas()  # empty without a build: the kernel tests are skipped
# Batch sizes around every tile height (4 and 8 rows, csrc/cpu/linear_tiles.h) and past
# the x rows one block of the kernels holds.
BATCH_SIZES = [1, 2, 3, 7, 8, 9, 16, 17, 37, 64, 70, 130]
UNIT = 2.0 ** -24  # float32 unit roundoff


def gguf_blocks(rows: int, cols: int, qtype: int, seed: int = 0) -> torch.Tensor:
    """(rows, cols / 32, bytes) blocks quantised by gguf-py from random weights."""
    from gguf import GGMLQuantizationType, quantize
    values = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    packed = quantize(values, GGMLQuantizationType(qtype))  # (rows, cols / 32 * bytes)
    return torch.from_numpy(packed.copy()).reshape(rows, cols // 32, BLOCK_BYTES[qtype])


def kernel():
    found = CpuPlatform().gguf_block_kernel()
    if found is None:
        pytest.skip("vllm._C_<isa> is not built")
    return found[0]


@pytest.mark.parametrize("qtype", QTYPES)
def test_reference_dequantize_equals_gguf_py(qtype):
    from gguf import GGMLQuantizationType
    from gguf import dequantize as gguf_dequantize
    blocks = gguf_blocks(7, 96, qtype)
    expected = gguf_dequantize(blocks.reshape(7, -1).numpy(), GGMLQuantizationType(qtype))
    assert torch.equal(dequantize(blocks, qtype), torch.from_numpy(expected))


@pytest.fixture(params=BUILT_ISAS)
def ops(request):
    """torch.ops._C_<isa> of one kernel build this CPU runs."""
    return cpu_isa.load_ops(request.param)


def assert_float32_accurate(out, x, weight, bias):
    """|out - x W^T - b| within float32 summation's bound, from a float64 product: each
    of the k products and sums and the bias rounds once, (k + 4) u (|x| |W|^T + |b|),
    doubled for headroom."""
    x, weight = x.double(), weight.double()
    expected = F.linear(x, weight, None if bias is None else bias.double())
    magnitude = F.linear(x.abs(), weight.abs(), None if bias is None else bias.double().abs())
    bound = 2 * (x.shape[1] + 4) * UNIT * magnitude
    error = (out.double() - expected).abs()
    assert bool((error <= bound).all()), f"worst error / bound {(error / bound).max():.3g}"


def gguf_linear(ops, blocks, qtype):
    def run(x, bias=None):
        out = torch.full((x.shape[0], blocks.shape[0]), float("nan"))
        ops.gguf_linear(out, x, blocks, qtype, bias)
        return out
    return run


def dense_linear(ops, weight):
    def run(x, bias=None):
        out = torch.full((x.shape[0], weight.shape[0]), float("nan"))
        ops.dense_linear(out, x, weight, bias)
        return out
    return run


def panel_linear(ops, weight):
    panels = pack_panels(weight, ops.panel_width())

    def run(x, bias=None):
        out = torch.full((x.shape[0], weight.shape[0]), float("nan"))
        ops.panel_linear(out, x, panels, bias)
        return out
    return run


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n", [67, 64])
def test_gguf_linear_matches_float64(ops, qtype, n):
    k = 160  # several blocks
    blocks = gguf_blocks(n, k, qtype, seed=n)
    weight = dequantize(blocks, qtype)
    gen = torch.Generator().manual_seed(n)
    for m in BATCH_SIZES:
        x = torch.randn(m, k, generator=gen)
        bias = torch.randn(n, generator=gen) if m % 2 else None
        assert_float32_accurate(gguf_linear(ops, blocks, qtype)(x, bias), x, weight, bias)


@pytest.mark.parametrize("n, k", [(67, 161), (64, 96), (33, 7), (8, 1), (40, 1001), (3, 300)])
def test_dense_linear_matches_float64(ops, n, k):
    gen = torch.Generator().manual_seed(k)
    weight = torch.randn(n, k, generator=gen)
    for m in BATCH_SIZES:
        x = torch.randn(m, k, generator=gen)
        bias = torch.randn(n, generator=gen) if m % 2 else None
        assert_float32_accurate(dense_linear(ops, weight)(x, bias), x, weight, bias)


@pytest.mark.parametrize("n, k", [(67, 161), (64, 96), (33, 7), (8, 1), (40, 1001), (3, 300),
                                  (97, 600)])
def test_panel_linear_matches_float64(ops, n, k):
    """Panels cut by n (partial last panel), k slices of 256 and their rest, tiles of
    every height."""
    gen = torch.Generator().manual_seed(k + n)
    weight = torch.randn(n, k, generator=gen)
    for m in BATCH_SIZES:
        x = torch.randn(m, k, generator=gen)
        bias = torch.randn(n, generator=gen) if m % 2 else None
        assert_float32_accurate(panel_linear(ops, weight)(x, bias), x, weight, bias)


def test_pack_panels_layout():
    weight = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)
    panels = pack_panels(weight, 4)  # (2, 3, 4)
    assert panels.shape == (2, 3, 4)
    assert torch.equal(panels[0], weight[:4].t())
    assert torch.equal(panels[1, :, 0], weight[4])
    assert not panels[1, :, 1:].any()


def row_invariance_cases(ops):
    """(name, linear, k) per weight kind. With k = 1024 or 1001, 130 rows of x span
    several of the kernel's x-row blocks, and 67 weight rows several weight-row blocks
    and both threads."""
    weight = torch.randn(67, 1001, generator=torch.Generator().manual_seed(5))
    cases = [(f"qtype {qtype}", gguf_linear(ops, gguf_blocks(67, 1024, qtype, 9), qtype), 1024)
             for qtype in QTYPES]
    return cases + [("dense", dense_linear(ops, weight), 1001),
                    ("dense k=40", dense_linear(ops, weight[:, :40].contiguous()), 40),
                    ("panels", panel_linear(ops, weight), 1001)]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_rows_are_bitwise_independent_of_batch_and_threads(ops, restore_threads):
    """Row i alone (m = 1, one thread) equals row i inside batches of every size, among
    other random rows, on one thread and on two."""
    gen = torch.Generator().manual_seed(0)
    for name, linear, k in row_invariance_cases(ops):
        rows = torch.randn(max(BATCH_SIZES), k, generator=gen)
        bias = torch.randn(67, generator=gen)
        torch.set_num_threads(1)
        alone = torch.cat([linear(rows[i:i + 1], bias) for i in range(rows.shape[0])])
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for m in BATCH_SIZES:
                picked = torch.randperm(rows.shape[0], generator=gen)[:m]
                batch = linear(rows[picked], bias)
                assert torch.equal(batch, alone[picked]), f"{name}, m={m}, {threads} threads"


def test_gguf_linear_rejects_bad_arguments(ops):
    blocks = gguf_blocks(4, 64, GGML_Q4_1)
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="unsupported ggml type 2"):
        ops.gguf_linear(torch.empty(2, 4), x, blocks, 2, None)
    with pytest.raises(RuntimeError, match="x has 96 columns"):
        ops.gguf_linear(torch.empty(2, 4), torch.randn(2, 96), blocks, GGML_Q4_1, None)
    with pytest.raises(RuntimeError, match="out must be"):
        ops.gguf_linear(torch.empty(2, 5), x, blocks, GGML_Q4_1, None)
    with pytest.raises(RuntimeError, match="weight_blocks must be"):
        ops.gguf_linear(torch.empty(2, 4), x, blocks, GGML_Q8_0, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        ops.gguf_linear(torch.empty(2, 4), x, blocks, GGML_Q4_1, torch.randn(3))


def test_panel_linear_rejects_bad_arguments(ops):
    width = ops.panel_width()
    x, out = torch.randn(2, 9), torch.empty(2, 4)
    panels = pack_panels(torch.randn(4, 9), width)
    with pytest.raises(RuntimeError, match=r"x must be a contiguous \(m, k\) float32"):
        ops.panel_linear(out, x.double(), panels, None)
    with pytest.raises(RuntimeError, match=f"panels are {width} rows wide"):
        ops.panel_linear(out, x, pack_panels(torch.randn(4, 9), width + 1), None)
    with pytest.raises(RuntimeError, match="x has 9 columns but the panels have 8"):
        ops.panel_linear(out, x, pack_panels(torch.randn(4, 8), width), None)
    with pytest.raises(RuntimeError, match="does not match"):
        ops.panel_linear(torch.empty(2, width + 1), x, panels, None)
    with pytest.raises(RuntimeError, match="bias has 5 values for 4 outputs"):
        ops.panel_linear(out, x, panels, torch.randn(5))


def test_dense_linear_rejects_bad_arguments(ops):
    x, weight, out = torch.randn(2, 9), torch.randn(4, 9), torch.empty(2, 4)
    with pytest.raises(RuntimeError, match=r"x must be a contiguous \(m, k\) float32"):
        ops.dense_linear(out, x.double(), weight, None)
    with pytest.raises(RuntimeError, match=r"x must be .*\(strided\)"):
        ops.dense_linear(out, torch.randn(9, 2).t(), weight, None)
    with pytest.raises(RuntimeError, match=r"weight must be a contiguous \(n, k\)"):
        ops.dense_linear(out, x, torch.randn(36), None)
    with pytest.raises(RuntimeError, match="x has 9 columns but the weight has 8"):
        ops.dense_linear(out, x, torch.randn(4, 8), None)
    with pytest.raises(RuntimeError, match=r"out must be a contiguous \(2, 4\)"):
        ops.dense_linear(torch.empty(4, 2), x, weight, None)
    with pytest.raises(RuntimeError, match="out must be"):
        ops.dense_linear(torch.empty(2, 4, dtype=torch.float64), x, weight, None)
    with pytest.raises(RuntimeError, match=r"bias must be a contiguous \(4,\)"):
        ops.dense_linear(out, x, weight, torch.randn(5))


def test_block_kernel_batch_limit_is_the_selected_builds():
    known = {isa for isas in cpu_isa.ISA_PREFERENCE.values() for isa in isas}
    assert set(GGUF_KERNEL_MAX_TOKENS) == known
    found = CpuPlatform().gguf_block_kernel()
    if found is None:
        pytest.skip("vllm._C_<isa> is not built")
    assert found[1] == GGUF_KERNEL_MAX_TOKENS[cpu_isa.selected_isa()]


def test_packed_linear_only_for_small_float_batches():
    blocks = gguf_blocks(8, 64, GGML_Q8_0)
    weight = dequantize(blocks, GGML_Q8_0)
    calls = []

    def recording_kernel(out, x, *args):
        calls.append(x.shape[0])
        out.copy_(F.linear(x, weight))

    packed = PackedLinear(BlockMatrix(blocks, GGML_Q8_0), recording_kernel, max_tokens=4)
    for tokens in (1, 4, 5):
        x = torch.randn(tokens, 64)
        torch.testing.assert_close(packed_or_dense_linear(x, weight, None, packed),
                                   F.linear(x, weight))
    packed_or_dense_linear(torch.randn(2, 64, dtype=torch.float64), weight.double(), None,
                           packed)
    assert calls == [1, 4]


def test_batch_size_picks_blocks_then_panels_then_the_gemm():
    blocks = gguf_blocks(8, 64, GGML_Q8_0)
    weight = dequantize(blocks, GGML_Q8_0)  # (8, 64)
    calls = []

    def recording(kind):
        def kernel(out, x, *args):
            calls.append((kind, x.shape[0]))
            out.copy_(F.linear(x, weight))
        return kernel

    packed = PackedLinear(BlockMatrix(blocks, GGML_Q8_0), recording("blocks"), max_tokens=4)
    weight.panels = PanelLinear(weight, recording("panels"), 16, min_tokens=1, max_tokens=10)
    for tokens in (3, 4, 5, 10, 11):
        x = torch.randn(tokens, 64)
        torch.testing.assert_close(packed_or_dense_linear(x, weight, None, packed),
                                   F.linear(x, weight))
    assert calls == [("blocks", 3), ("blocks", 4), ("panels", 5), ("panels", 10)]


def test_packed_linear_widens_bfloat16_batches():
    """A bfloat16 model's small batches use the float32 kernel on the exact block values,
    rounded to bfloat16 once at the end; the bias is widened too."""
    blocks = gguf_blocks(8, 64, GGML_Q8_0)
    weight = dequantize(blocks, GGML_Q8_0)  # (8, 64) float32
    seen = []

    def recording_kernel(out, x, blocks, qtype, bias):
        seen.append((x.dtype, bias.dtype))
        out.copy_(F.linear(x, weight, bias))

    packed = PackedLinear(BlockMatrix(blocks, GGML_Q8_0), recording_kernel, max_tokens=4)
    x = torch.randn(3, 64).to(torch.bfloat16)
    bias = torch.randn(8).to(torch.bfloat16)
    out = packed_or_dense_linear(x, weight.to(torch.bfloat16), bias, packed)
    assert seen == [(torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.linear(x.float(), weight, bias.float()).to(torch.bfloat16))


def test_block_matrix_narrows_whole_blocks_only():
    matrix = BlockMatrix(gguf_blocks(6, 128, GGML_Q4_1), GGML_Q4_1)
    assert matrix.shape == (6, 128) and matrix.dim() == 2
    assert torch.equal(matrix.narrow(1, 32, 64).dequantize(), matrix.dequantize()[:, 32:96])
    assert torch.equal(matrix.narrow(0, 2, 3).dequantize(), matrix.dequantize()[2:5])
    with pytest.raises(ValueError, match="cut GGUF blocks"):
        matrix.narrow(1, 16, 32)
    with pytest.raises(ValueError, match="type mismatch"):
        BlockMatrix.empty(6, 128, GGML_Q8_0).copy_(matrix)


def load_both(layer, named: dict[str, torch.Tensor], qtype: int) -> BlockMatrix:
    """Load float32 weights and their blocks through the layer's own weight loader."""
    target = BlockMatrix.empty(*layer.weight.shape, qtype)
    for shard_id, blocks in named.items():
        args = () if shard_id is None else (shard_id,)
        layer.weight_loader(layer.weight, dequantize(blocks, qtype), *args)
        layer.weight_loader(target, BlockMatrix(blocks, qtype), *args)
    return target


@pytest.mark.parametrize("rank", [0, 1])
def test_parallel_loaders_shard_blocks_like_weights(tp_state, rank):
    init_tensor_parallel(rank, 2)
    hidden, head = 128, 32
    qkv = QKVParallelLinear(hidden, head, total_num_heads=4, total_num_kv_heads=2, bias=False)
    parts = {"q": gguf_blocks(128, hidden, GGML_Q4_1, 1),
             "k": gguf_blocks(64, hidden, GGML_Q4_1, 2),
             "v": gguf_blocks(64, hidden, GGML_Q4_1, 3)}
    gate_up = MergedColumnParallelLinear(hidden, [64, 64], bias=False)
    row = RowParallelLinear(128, hidden, bias=False)
    head_layer = ParallelLMHead(100, hidden)
    cases = [(qkv, parts, GGML_Q4_1),
             (gate_up, {0: gguf_blocks(64, hidden, GGML_Q4_1, 4),
                        1: gguf_blocks(64, hidden, GGML_Q4_1, 5)}, GGML_Q4_1),
             (row, {None: gguf_blocks(hidden, 128, GGML_Q4_1, 6)}, GGML_Q4_1),
             (head_layer, {None: gguf_blocks(100, hidden, GGML_Q8_0, 7)}, GGML_Q8_0)]
    for layer, named, qtype in cases:
        matrix = load_both(layer, named, qtype)
        assert torch.equal(matrix.dequantize(), layer.weight.data), type(layer).__name__


def test_row_shard_that_cuts_a_block_is_refused(tp_state):
    init_tensor_parallel(1, 2)
    row = RowParallelLinear(96, 8, bias=False, input_partition=(48, 48))
    with pytest.raises(ValueError, match="cut GGUF blocks"):
        row.weight_loader(BlockMatrix.empty(8, 48 + 16, GGML_Q4_1),
                          BlockMatrix(gguf_blocks(8, 96, GGML_Q4_1), GGML_Q4_1))


def test_embedding_loader_pads_blocks_with_zeros(tp_state):
    init_tensor_parallel(1, 2)
    embedding = VocabParallelEmbedding(99, 64)  # rank 1 holds rows 50..98 and one pad row
    matrix = load_both(embedding, {None: gguf_blocks(99, 64, GGML_Q8_0)}, GGML_Q8_0)
    assert torch.equal(matrix.dequantize()[-1], torch.zeros(64))
    assert torch.equal(matrix.dequantize(), embedding.weight.data)


# ---- the demo model ------------------------------------------------------------------------
def test_converted_blocks_dequantize_to_the_converted_weights(demo_model_dir, demo_gguf):
    from gguf import GGUFReader
    from safetensors import safe_open

    from vllm.model_executor.model_loader.gguf_block_weights import (
        BLOCKS_FILE, _read_gguf_blocks)
    blocks = dict(_read_gguf_blocks(os.path.join(demo_model_dir, BLOCKS_FILE)))
    # every 2-D weight of the Q4_1 / Q8_0 file is kept: 7 per layer and the embedding
    assert len(blocks) == 7 * 30 + 1
    with safe_open(os.path.join(demo_model_dir, "model.safetensors"), framework="pt") as dense:
        for name, matrix in blocks.items():
            assert torch.equal(matrix.dequantize(), dense.get_tensor(name)), name
    # llama's q rows are permuted in GGUF files; the kept blocks are in Hugging Face order
    in_file = next(t for t in GGUFReader(demo_gguf).tensors if t.name == "blk.0.attn_q.weight")
    file_rows = torch.from_numpy(in_file.data.copy())  # (576, 360)
    kept_rows = blocks["model.layers.0.self_attn.q_proj.weight"].blocks.reshape(576, -1)
    assert not torch.equal(kept_rows, file_rows)
    assert sorted(map(bytes, kept_rows.numpy())) == sorted(map(bytes, file_rows.numpy()))


def demo_model(folder: str, dtype: torch.dtype = torch.float32):
    from vllm.model_executor.model_loader import get_model
    from vllm.transformers_utils.config import get_hf_config
    return get_model(folder, get_hf_config(folder), dtype, "cpu")


def packed_layers(model) -> dict:
    return {name: m.packed for name, m in model.named_modules()
            if getattr(m, "packed", None) is not None}


def test_demo_model_layers_hold_blocks(demo_model_dir):
    kernel()
    packed = packed_layers(demo_model(demo_model_dir))
    assert len(packed) == 4 * 30 + 1  # qkv, o, gate_up, down per layer; the tied head
    assert "model.embed_tokens" not in packed  # only looked up: no blocks kept for it
    assert packed["lm_head"].matrix.shape == (49152, 576)  # tied: the embedding's blocks
    assert packed["lm_head"].matrix.qtype == GGML_Q8_0
    assert packed["model.layers.0.mlp.down_proj"].matrix.qtype == GGML_Q4_1


def test_bfloat16_demo_model_keeps_its_blocks(demo_model_dir):
    """bfloat16 weights are the blocks' values rounded: the layers keep their blocks."""
    kernel()
    model = demo_model(demo_model_dir, torch.bfloat16)
    packed = packed_layers(model)
    assert len(packed) == 4 * 30 + 1
    down = model.model.layers[0].mlp.down_proj
    assert torch.equal(packed["model.layers.0.mlp.down_proj"].matrix.dequantize()
                       .to(torch.bfloat16), down.weight.data)


def test_demo_model_weights_get_panels_once(demo_model_dir, monkeypatch):
    """Every linear layer's float32 weight is packed once (the tied head shares the
    embedding's); VLLM_CPU_PANEL_GEMM=0 and batch-invariant mode pack none."""
    if CpuPlatform().panel_kernel() is None:
        pytest.skip("no panel window for this kernel build")
    model = demo_model(demo_model_dir)
    layers = [m for m in model.modules() if hasattr(m, "packed")]
    assert len(layers) == 4 * 30 + 1
    assert all(isinstance(m.weight.panels, PanelLinear) for m in layers)
    assert model.lm_head.weight.panels is model.model.embed_tokens.weight.panels
    down = model.model.layers[0].mlp.down_proj
    x = torch.randn(40, down.weight.shape[1])
    assert_float32_accurate(down.weight.panels(x, None), x, down.weight, None)
    assert attach_panels(model, CpuPlatform().panel_kernel()) == 0  # already packed
    monkeypatch.setenv("VLLM_CPU_PANEL_GEMM", "0")
    assert not hasattr(demo_model(demo_model_dir).model.layers[0].mlp.down_proj.weight,
                       "panels")
    monkeypatch.delenv("VLLM_CPU_PANEL_GEMM")
    from vllm.model_executor.model_loader import get_model
    from vllm.transformers_utils.config import get_hf_config
    invariant = get_model(demo_model_dir, get_hf_config(demo_model_dir), torch.float32, "cpu",
                          batch_invariant=True)
    assert not hasattr(invariant.lm_head.weight, "panels")


def test_kernels_off_or_no_blocks_file_keep_float32(demo_model_dir, tiny_model_dirs,
                                                    monkeypatch):
    assert packed_layers(demo_model(tiny_model_dirs["llama"])) == {}
    monkeypatch.setenv("VLLM_CPU_GGUF_KERNELS", "0")
    assert CpuPlatform().gguf_block_kernel() is None
    assert packed_layers(demo_model(demo_model_dir)) == {}
