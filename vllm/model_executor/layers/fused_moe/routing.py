"""Which experts each token goes to, and with what weight (DeepSeek-V2/V3 routing)."""
from dataclasses import dataclass
from typing import Optional

import torch

SCORING_FUNCS = ("softmax", "sigmoid")
# greedy: top-k of all scores; group_limited_greedy (V2): top-k inside the topk_group groups
# with the best max score; noaux_tc (V3): scores + e_score_correction_bias choose, groups
# ranked by the sum of their two best biased scores.
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
GROUPED_METHODS = ("group_limited_greedy", "noaux_tc")
NOAUX_GROUP_SCORE_TOP = 2  # a noaux_tc group's score sums this many of its best scores
NORM_EPSILON = 1e-20  # added to the sum of the chosen weights before normalising them


@dataclass(frozen=True)
class Routing:
    """A validated routing configuration over `num_experts` experts."""
    num_experts: int
    top_k: int
    scoring_func: str
    renormalize: bool
    topk_method: str
    num_expert_group: Optional[int] = None
    topk_group: Optional[int] = None
    routed_scaling_factor: float = 1.0

    def __post_init__(self):
        if self.scoring_func not in SCORING_FUNCS:
            raise ValueError(f"scoring_func must be one of {SCORING_FUNCS}, "
                             f"got {self.scoring_func!r}")
        if self.topk_method not in TOPK_METHODS:
            raise ValueError(f"topk_method must be one of {TOPK_METHODS}, "
                             f"got {self.topk_method!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k (num_experts_per_tok) must be in [1, {self.num_experts}], "
                             f"got {self.top_k}")
        if self.topk_method in GROUPED_METHODS:
            self._check_groups()

    def _check_groups(self) -> None:
        groups, kept = self.groups, self.kept_groups
        if groups < 1 or self.num_experts % groups:
            raise ValueError(f"n_group ({groups}) must divide the {self.num_experts} experts")
        if not 1 <= kept <= groups:
            raise ValueError(f"topk_group ({kept}) must be in [1, n_group={groups}]")
        per_group = self.num_experts // groups
        if self.top_k > kept * per_group:
            raise ValueError(f"top_k ({self.top_k}) exceeds the {kept * per_group} experts "
                             f"of topk_group={kept} groups")
        if self.topk_method == "noaux_tc" and groups > 1 and per_group < NOAUX_GROUP_SCORE_TOP:
            raise ValueError(f"noaux_tc ranks groups by their best {NOAUX_GROUP_SCORE_TOP} "
                             f"experts; n_group={groups} leaves {per_group} per group")

    @property
    def groups(self) -> int:
        if self.num_expert_group is None and self.topk_method == "group_limited_greedy":
            raise ValueError("topk_method 'group_limited_greedy' needs n_group and topk_group")
        return self.num_expert_group or 1

    @property
    def kept_groups(self) -> int:
        return self.groups if self.topk_group is None else self.topk_group


def route(routing: Routing, router_logits: torch.Tensor,
          correction_bias: Optional[torch.Tensor] = None, row_invariant: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (T, k) float32, expert ids (T, k) int64) for the gate's logits (T, E);
    `row_invariant`: each row's result bit for bit the same whatever T is (batch-invariant
    mode), at the cost of a sigmoid that may differ from torch.sigmoid in the last bit."""
    if router_logits.dim() != 2 or router_logits.shape[1] != routing.num_experts:
        raise ValueError(f"router_logits must be (num_tokens, {routing.num_experts}), "
                         f"got {tuple(router_logits.shape)}")
    logits = router_logits.float()  # (T, E)
    if routing.scoring_func == "softmax":
        scores = logits.softmax(dim=-1)  # (T, E)
    elif row_invariant:
        scores = row_invariant_sigmoid(logits)  # (T, E)
    else:
        scores = logits.sigmoid()  # (T, E)
    choice = scores
    if routing.topk_method == "noaux_tc":
        choice = scores + checked_bias(correction_bias, routing.num_experts)  # (T, E)
    if routing.topk_method in GROUPED_METHODS and routing.kept_groups < routing.groups:
        choice = mask_unkept_groups(routing, choice)
    ids = choice.topk(routing.top_k, dim=-1).indices  # (T, k)
    weights = scores.gather(1, ids)  # (T, k)
    if routing.renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPSILON)
    return weights * routing.routed_scaling_factor, ids


def row_invariant_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x) = softmax([x, 0])[0], elementwise over x (T, E).

    torch.sigmoid runs a contiguous (T, E) tensor as one flat loop of vector steps with a
    scalar remainder whose exp rounds differently, so which elements take the scalar path
    depends on T (E = 16 on AVX-512: every element when T = 1, none when T = 16). The
    last-dimension softmax computes every row alone, the same way for any T."""
    pairs = torch.stack([x, torch.zeros_like(x)], dim=-1)  # (T, E, 2)
    return pairs.softmax(dim=-1)[..., 0]  # (T, E)


def checked_bias(bias: Optional[torch.Tensor], num_experts: int) -> torch.Tensor:
    if bias is None:
        raise ValueError("topk_method 'noaux_tc' needs e_score_correction_bias")
    if bias.shape != (num_experts,):
        raise ValueError(f"e_score_correction_bias must be ({num_experts},), "
                         f"got {tuple(bias.shape)}")
    return bias.float()


def mask_unkept_groups(routing: Routing, choice: torch.Tensor) -> torch.Tensor:
    """`choice` with every expert outside the token's best `topk_group` groups at -inf."""
    num_tokens = choice.shape[0]
    by_group = choice.view(num_tokens, routing.groups, -1)  # (T, G, E / G)
    if routing.topk_method == "noaux_tc":
        group_scores = by_group.topk(NOAUX_GROUP_SCORE_TOP, dim=-1).values.sum(dim=-1)  # (T, G)
    else:
        group_scores = by_group.amax(dim=-1)  # (T, G)
    best = group_scores.topk(routing.kept_groups, dim=-1).indices  # (T, topk_group)
    kept = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)  # (T, G)
    masked = by_group.masked_fill(~kept.unsqueeze(-1), float("-inf"))  # (T, G, E / G)
    return masked.view(num_tokens, routing.num_experts)


def select_experts(router_logits: torch.Tensor, top_k: int, *, scoring_func: str,
                   renormalize: bool, num_expert_group: Optional[int],
                   topk_group: Optional[int], topk_method: str,
                   e_score_correction_bias: Optional[torch.Tensor] = None,
                   routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's `top_k` experts and their weights, as transformers' DeepSeek routers.

    Experts are chosen on the scores (softmax or sigmoid of `router_logits` (T, E)),
    plus `e_score_correction_bias` for noaux_tc, inside the best `topk_group` of
    `num_expert_group` groups for the grouped methods; the weights are the chosen
    experts' unbiased scores, divided by their sum when `renormalize`, times
    `routed_scaling_factor`. Returns (weights (T, k) float32, ids (T, k) int64).
    """
    routing = Routing(router_logits.shape[-1], top_k, scoring_func, renormalize, topk_method,
                      num_expert_group, topk_group, routed_scaling_factor)
    return route(routing, router_logits, e_score_correction_bias)


def routing_kwargs_from_config(config) -> dict:
    """FusedMoE's routing keywords for a DeepseekV2/V3 Hugging Face config, as transformers
    routes: V3 sigmoid + noaux_tc (the config's `topk_method` is not read), V2 softmax with
    the config's `topk_method` and no normalisation (its router ignores `norm_topk_prob`)."""
    model_type = getattr(config, "model_type", None)
    common = dict(num_expert_group=getattr(config, "n_group", None),
                  topk_group=getattr(config, "topk_group", None),
                  routed_scaling_factor=float(getattr(config, "routed_scaling_factor", 1.0)))
    if model_type == "deepseek_v3":
        return dict(common, scoring_func="sigmoid", topk_method="noaux_tc",
                    renormalize=bool(config.norm_topk_prob), has_score_correction_bias=True)
    if model_type == "deepseek_v2":
        return dict(common, scoring_func="softmax", renormalize=False,
                    topk_method=getattr(config, "topk_method", None) or "greedy",
                    has_score_correction_bias=False)
    raise ValueError(f"no DeepSeek MoE routing for model_type {model_type!r}")
