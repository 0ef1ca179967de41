"""FusedMoE and select_experts against transformers' DeepSeek-V2/V3 MoE and a per-token loop."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from transformers import DeepseekV2Config, DeepseekV3Config
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

from free_ports import free_port
from vllm.config import ConfigError
from vllm.distributed.parallel_state import init_tensor_parallel
from vllm.model_executor.layers.fused_moe import (
    ExpertWeightLoader, FusedMoE, check_experts_loaded, expert_params_mapping,
    routing_kwargs_from_config, select_experts)
from vllm.model_executor.layers.fused_moe.experts import gemm_into, kernel_into
from vllm.model_executor.layers.fused_moe.routing import Routing, route, row_invariant_sigmoid
from vllm.model_executor.layers.invariant_kernels import make_batch_invariant
from vllm.platforms import current_platform

HIDDEN, INTERMEDIATE, EXPERTS = 32, 16, 8
PREFIX = "model.layers.1.mlp"

# name -> (DeepSeek version, config overrides)
CASES = {
    "v3_groups_norm": (3, dict(n_group=4, topk_group=2, num_experts_per_tok=3,
                               norm_topk_prob=True, routed_scaling_factor=2.5)),
    "v3_groups_no_norm": (3, dict(n_group=4, topk_group=2, num_experts_per_tok=3,
                                  norm_topk_prob=False, routed_scaling_factor=1.0)),
    "v3_one_group": (3, dict(n_group=1, topk_group=1, num_experts_per_tok=2,
                             norm_topk_prob=True, routed_scaling_factor=1.5)),
    "v3_all_groups_kept": (3, dict(n_group=2, topk_group=2, num_experts_per_tok=4,
                                   norm_topk_prob=False, routed_scaling_factor=0.5)),
    "v2_greedy": (2, dict(topk_method="greedy", num_experts_per_tok=3)),
    "v2_greedy_scaled": (2, dict(topk_method="greedy", num_experts_per_tok=2,
                                 routed_scaling_factor=16.0)),
    "v2_group_limited": (2, dict(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                 num_experts_per_tok=3, routed_scaling_factor=2.0)),
}


def hf_moe(case: str, seed: int = 0):
    """(config, transformers' MoE module with random weights) for a CASES entry."""
    version, overrides = CASES[case]
    config_cls, moe_cls = ((DeepseekV3Config, DeepseekV3MoE) if version == 3
                           else (DeepseekV2Config, DeepseekV2Moe))
    config = config_cls(hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE,
                        n_routed_experts=EXPERTS, n_shared_experts=1, num_attention_heads=4,
                        num_key_value_heads=4, hidden_act="silu", **overrides)
    generator = torch.Generator().manual_seed(seed)
    moe = moe_cls(config).eval()
    with torch.no_grad():
        for name, param in moe.named_parameters():
            scale = 0.5 if name.startswith("gate.") else 0.2
            param.copy_(scale * torch.randn(param.shape, generator=generator))
        if version == 3:
            moe.gate.e_score_correction_bias.copy_(0.2 * torch.randn(EXPERTS,
                                                                     generator=generator))
    return config, moe


def checkpoint_state(moe) -> dict[str, torch.Tensor]:
    """The routed experts as a DeepSeek checkpoint names them (one tensor per projection)."""
    state = {}
    for expert in range(EXPERTS):
        gate_up = moe.experts.gate_up_proj[expert].detach()  # (2I, H)
        state[f"{PREFIX}.experts.{expert}.gate_proj.weight"] = gate_up[:INTERMEDIATE].clone()
        state[f"{PREFIX}.experts.{expert}.up_proj.weight"] = gate_up[INTERMEDIATE:].clone()
        state[f"{PREFIX}.experts.{expert}.down_proj.weight"] = \
            moe.experts.down_proj[expert].detach().clone()
    return state


class MoeBlock(nn.Module):
    """Stands in for a model's MoE block: the FusedMoE sits at `<PREFIX>.experts`."""

    def __init__(self, config):
        super().__init__()
        self.experts = FusedMoE(EXPERTS, config.num_experts_per_tok, HIDDEN, INTERMEDIATE,
                                prefix=f"{PREFIX}.experts", **routing_kwargs_from_config(config))


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module(), nn.Module()])
        self.model.layers[1].mlp = MoeBlock(config)


def load_model(config, moe, state=None) -> FusedMoE:
    model = Model(config)
    loader = ExpertWeightLoader(dict(model.named_parameters()), expert_params_mapping(EXPERTS))
    for name, tensor in (checkpoint_state(moe) if state is None else state).items():
        assert loader.load(name, tensor) == f"{PREFIX}.experts." + (
            "w2_weight" if "down_proj" in name else "w13_weight")
    check_experts_loaded(model)
    layer = model.model.layers[1].mlp.experts
    if layer.e_score_correction_bias is not None:
        layer.e_score_correction_bias.data.copy_(moe.gate.e_score_correction_bias)
    return layer


def routing_args(config, moe) -> dict:
    kwargs = routing_kwargs_from_config(config)
    del kwargs["has_score_correction_bias"]
    bias = getattr(moe.gate, "e_score_correction_bias", None)
    return dict(kwargs, e_score_correction_bias=bias)


@pytest.mark.parametrize("case", sorted(CASES))
def test_select_experts_matches_transformers_router(case):
    config, moe = hf_moe(case)
    hidden = torch.randn(64, HIDDEN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, hf_weights, hf_ids = moe.gate(hidden)
    weights, ids = select_experts(logits, config.num_experts_per_tok,
                                  **routing_args(config, moe))
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert ids.shape == weights.shape == (64, config.num_experts_per_tok)
    ours_ids, ours_order = ids.sort(dim=-1)
    hf_sorted_ids, hf_order = hf_ids.sort(dim=-1)
    assert torch.equal(ours_ids, hf_sorted_ids)
    torch.testing.assert_close(weights.gather(1, ours_order), hf_weights.gather(1, hf_order),
                               atol=1e-6, rtol=0)


def test_group_limit_and_bias_change_the_choice():
    # Expert 0 has the best score but its group (with expert 1) loses to groups 1 and 2;
    # expert 7's bias lifts group 3 and wins it a place, its weight stays unbiased.
    logits = torch.tensor([[4.0, -9.0, 1.0, 1.5, 2.0, 2.2, -3.0, -2.0]])
    common = dict(scoring_func="sigmoid", renormalize=False, num_expert_group=4,
                  topk_group=2, topk_method="noaux_tc")
    _, ids = select_experts(logits, 2, e_score_correction_bias=torch.zeros(EXPERTS), **common)
    assert sorted(ids[0].tolist()) == [4, 5]
    bias = torch.zeros(EXPERTS)
    bias[7] = 3.0
    weights, ids = select_experts(logits, 2, e_score_correction_bias=bias, **common)
    assert sorted(ids[0].tolist()) == [5, 7]
    torch.testing.assert_close(weights[0, ids[0] == 7], torch.sigmoid(logits[0, 7:8]))


def expert_matmul(name: str):
    """gemm: MKL's GEMM for every expert; mixed: the small-batch kernel up to 4 rows."""
    if name == "gemm":
        return gemm_into
    return kernel_into(fixed_order_kernel(), 4)


@pytest.mark.parametrize("case", ["v3_groups_norm", "v3_one_group", "v2_greedy",
                                  "v2_group_limited"])
@pytest.mark.parametrize("num_tokens", [1, 7, 64])
@pytest.mark.parametrize("matmul", ["platform", "gemm", "mixed"])
def test_fused_moe_matches_transformers_moe(case, num_tokens, matmul):
    config, moe = hf_moe(case)
    layer = load_model(config, moe)
    if matmul != "platform":
        layer.matmul_into = expert_matmul(matmul)
    hidden = torch.randn(num_tokens, HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = moe(hidden)  # routed + shared experts
        ours = layer(hidden, F.linear(hidden, moe.gate.weight)) + moe.shared_experts(hidden)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def per_token_reference(state: dict, hidden, weights, ids) -> torch.Tensor:
    """Each token through each of its experts, one at a time, in float64."""
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for token in range(hidden.shape[0]):
        x = hidden[token].double()
        for weight, expert in zip(weights[token].tolist(), ids[token].tolist()):
            name = f"{PREFIX}.experts.{expert}"
            gate = state[f"{name}.gate_proj.weight"].double() @ x
            up = state[f"{name}.up_proj.weight"].double() @ x
            act = gate * torch.sigmoid(gate) * up
            out[token] += weight * (state[f"{name}.down_proj.weight"].double() @ act)
    return out


@pytest.mark.parametrize("case", ["v3_groups_no_norm", "v2_group_limited"])
def test_fused_moe_matches_per_token_loop(case):
    config, moe = hf_moe(case, seed=3)
    layer = load_model(config, moe)
    hidden = torch.randn(23, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, weights, ids = moe.gate(hidden)
        ours = layer(hidden, logits)
    expected = per_token_reference(checkpoint_state(moe), hidden, weights, ids)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-5)


def test_missing_expert_weight_is_named():
    config, moe = hf_moe("v3_groups_norm")
    state = checkpoint_state(moe)
    del state[f"{PREFIX}.experts.5.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing 1 expert weight.*"
                                         r"model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight"):
        load_model(config, moe, state)


@pytest.mark.parametrize("name,shape", [("2.down_proj", (HIDDEN, INTERMEDIATE + 1)),
                                        ("6.gate_proj", (INTERMEDIATE, HIDDEN - 1)),
                                        ("0.up_proj", (INTERMEDIATE * 2, HIDDEN))])
def test_wrong_expert_shape_is_named(name, shape):
    config, moe = hf_moe("v2_greedy")
    state = checkpoint_state(moe)
    state[f"{PREFIX}.experts.{name}.weight"] = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{PREFIX}\.experts\.{name}\.weight: checkpoint "):
        load_model(config, moe, state)


def test_loader_refusals():
    config, _ = hf_moe("v2_greedy")
    layer = MoeBlock(config).experts
    gate = torch.zeros(INTERMEDIATE, HIDDEN)
    with pytest.raises(ValueError, match="expert id 8 outside"):
        layer.weight_loader(layer.w13_weight, gate, "w1", 8)
    with pytest.raises(ValueError, match="shard_id must be one of"):
        layer.weight_loader(layer.w13_weight, gate, "w4", 0)
    with pytest.raises(ValueError, match="shard w2 does not belong"):
        layer.weight_loader(layer.w13_weight, gate, "w2", 0)


@pytest.mark.parametrize("rank", [0, 1])
def test_tp_rank_keeps_its_intermediate_slice(tp_state, rank):
    config, moe = hf_moe("v3_groups_norm")
    init_tensor_parallel(rank, 2)
    layer = load_model(config, moe)
    state = checkpoint_state(moe)
    half = INTERMEDIATE // 2
    cols = slice(rank * half, (rank + 1) * half)
    for expert in (0, 7):
        name = f"{PREFIX}.experts.{expert}"
        expected_w13 = torch.cat([state[f"{name}.gate_proj.weight"][cols],
                                  state[f"{name}.up_proj.weight"][cols]])
        assert torch.equal(layer.w13_weight[expert], expected_w13)
        assert torch.equal(layer.w2_weight[expert], state[f"{name}.down_proj.weight"][:, cols])


def run_rank(rank: int, world_size: int, port: int, case: str, inputs_path: str,
             out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        init_tensor_parallel(rank, world_size)
        config, moe = hf_moe(case)
        hidden, logits = torch.load(inputs_path)
        with torch.no_grad():
            out = load_model(config, moe)(hidden, logits)
        if rank == 0:
            torch.save(out, out_path)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one(tmp_path):
    case = "v3_groups_norm"
    config, moe = hf_moe(case)
    hidden = torch.randn(19, HIDDEN, generator=torch.Generator().manual_seed(5))
    logits = F.linear(hidden, moe.gate.weight).detach()
    torch.save((hidden, logits), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = load_model(config, moe)(hidden, logits)
    mp.start_processes(run_rank, args=(2, free_port(), case, str(tmp_path / "inputs.pt"),
                                       str(tmp_path / "out.pt")),
                       nprocs=2, join=True, start_method="spawn")
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-5, rtol=1e-5)


def fixed_order_kernel():
    try:
        return current_platform.batch_invariant_linear(torch.float32)
    except ConfigError as error:
        pytest.skip(str(error))


def test_batch_invariant_token_alone_equals_in_batch():
    config, moe = hf_moe("v3_groups_norm", seed=6)
    layer = load_model(config, moe)
    holder = nn.Sequential(layer)
    assert make_batch_invariant(holder, fixed_order_kernel()) == 1
    hidden = torch.randn(37, HIDDEN, generator=torch.Generator().manual_seed(7))
    logits = F.linear(hidden, moe.gate.weight).detach()
    with torch.no_grad():
        batch = layer(hidden, logits)
        for token in (0, 11, 36):
            alone = layer(hidden[token:token + 1], logits[token:token + 1])
            assert torch.equal(alone[0], batch[token])


@pytest.mark.parametrize("num_experts", [8, 16, 17, 256])
def test_row_invariant_routing_gives_each_row_the_same_answer_at_any_batch_size(num_experts):
    # torch.sigmoid of a contiguous (T, E) tensor takes a scalar path for a remainder whose
    # place depends on T; the row-invariant routing must not.
    routing = Routing(num_experts, 2, "sigmoid", True, "noaux_tc")
    bias = torch.zeros(num_experts)
    logits = torch.randn(3000, num_experts, generator=torch.Generator().manual_seed(3))
    scores = row_invariant_sigmoid(logits)
    torch.testing.assert_close(scores, logits.sigmoid(), atol=1e-7, rtol=0)
    weights, ids = route(routing, logits, bias, row_invariant=True)
    for rows in (1, 2, 3, 5, 16, 33, 700, 2049):
        assert torch.equal(row_invariant_sigmoid(logits[:rows]), scores[:rows])
        got_weights, got_ids = route(routing, logits[:rows], bias, row_invariant=True)
        assert torch.equal(got_weights, weights[:rows]) and torch.equal(got_ids, ids[:rows])
    plain_weights, plain_ids = route(routing, logits, bias)
    assert torch.equal(plain_ids, ids)
    torch.testing.assert_close(plain_weights, weights, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(topk_method="best"), "topk_method must be one of"),
    (dict(scoring_func="relu"), "scoring_func must be one of"),
    (dict(num_expert_group=3), r"n_group \(3\) must divide the 8 experts"),
    (dict(topk_group=5), r"topk_group \(5\) must be in \[1, n_group=4\]"),
    (dict(top_k=5), r"top_k \(5\) exceeds the 4 experts of topk_group=2 groups"),
    (dict(top_k=9), r"top_k \(num_experts_per_tok\) must be in \[1, 8\]"),
    (dict(num_expert_group=8, topk_group=4), "noaux_tc ranks groups by their best 2"),
    (dict(topk_method="group_limited_greedy", num_expert_group=None),
     "group_limited_greedy' needs n_group"),
    (dict(has_score_correction_bias=False), "noaux_tc' needs has_score_correction_bias"),
    (dict(intermediate_size=15), r"moe_intermediate_size \(15\) is not divisible"),
])
def test_bad_configuration_is_refused(tp_state, kwargs, message):
    init_tensor_parallel(0, 2)
    args = dict(num_experts=EXPERTS, top_k=2, hidden_size=HIDDEN,
                intermediate_size=INTERMEDIATE, scoring_func="sigmoid", renormalize=True,
                topk_method="noaux_tc", num_expert_group=4, topk_group=2,
                has_score_correction_bias=True)
    with pytest.raises(ValueError, match=message):
        FusedMoE(**{**args, **kwargs})


def test_bad_inputs_are_refused():
    logits = torch.randn(3, EXPERTS)
    common = dict(scoring_func="softmax", renormalize=False, num_expert_group=None,
                  topk_group=None)
    with pytest.raises(ValueError, match="needs e_score_correction_bias"):
        select_experts(logits, 2, topk_method="noaux_tc", **common)
    with pytest.raises(ValueError, match=r"e_score_correction_bias must be \(8,\)"):
        select_experts(logits, 2, topk_method="noaux_tc", e_score_correction_bias=torch.zeros(7),
                       **common)
    config, moe = hf_moe("v2_greedy")
    layer = load_model(config, moe)
    with pytest.raises(ValueError, match=r"hidden must be \(T, 32\)"):
        layer(torch.randn(3, HIDDEN + 1), logits)
    with pytest.raises(ValueError, match="no DeepSeek MoE routing for model_type 'llama'"):
        routing_kwargs_from_config(type("Config", (), {"model_type": "llama"})())
