"""Fakes of torch_npu's int8 quantization ops (W8A8 linear layers and experts), strict about
the argument combinations the torch_npu docs list (hiascend.com, PyTorch 6.0.0 / 7.0.0 API
lists: npu_dynamic_quant, npu_quantize, npu_quant_matmul, npu_grouped_matmul,
npu_format_cast). Each computes its documented formula in plain PyTorch: exact int64 sums,
float32 scaling, then the output dtype."""
import torch

from torch_npu import CALLS, _moe_ops
from torch_npu import _checks as C

__all__ = ["npu_dynamic_quant", "npu_quantize", "npu_quant_matmul", "npu_grouped_matmul",
           "npu_format_cast"]
_HALF = C.HALF_TYPES
ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29


def npu_dynamic_quant(x, *, smooth_scales=None, group_index=None, dst_type=None):
    """y = round(x / scale), scale = row_max(|x|) / 127 per row (float32)."""
    op = "npu_dynamic_quant"
    CALLS[op] += 1
    C.tensor(op, "x", x, _dims(op, "x", x), _HALF, contiguous=False)
    if x.dim() < 2:
        C.fail(op, f"x must have more than 1 dim, got shape {tuple(x.shape)}")
    if smooth_scales is not None or group_index is not None:
        C.fail(op, "the fake implements no smooth_scales / group_index")
    if dst_type not in (None, torch.int8):
        C.fail(op, f"the fake implements dst_type int8 only, got {dst_type}")
    xf = x.float()
    scale = xf.abs().amax(dim=-1) / 127  # (...,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row gives 0
    y = torch.round(xf / safe.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return y, scale


def npu_quantize(input, scales, zero_points, dtype, axis=1, div_mode=True):  # noqa: A002
    """div_mode: y = round(input / scales + zero_points), else round(input * scales + zp)."""
    op = "npu_quantize"
    CALLS[op] += 1
    x = C.tensor(op, "input", input, _dims(op, "input", input), (torch.float32,) + _HALF,
                 contiguous=False)
    if axis not in (-1, x.dim() - 1):
        C.fail(op, f"axis must be the last dim (-1 or {x.dim() - 1}), got {axis}")
    if div_mode:
        C.tensor(op, "scales", scales, 1, (torch.float32, torch.bfloat16))
        zp_types = (torch.int8, torch.uint8, torch.int32, torch.bfloat16)
        if dtype not in (torch.qint8, torch.quint8, torch.int32):
            C.fail(op, f"div_mode=True: dtype must be qint8, quint8 or int32, got {dtype}")
    else:
        C.tensor(op, "scales", scales, 1, (x.dtype,))
        zp_types = (scales.dtype,)
        if dtype != torch.qint8:
            C.fail(op, f"div_mode=False: the fake implements dtype qint8 only, got {dtype}")
    if scales.numel() not in (1, x.shape[-1]):
        C.fail(op, f"scales must have 1 or {x.shape[-1]} values, got {scales.numel()}")
    offset = torch.zeros(1)
    if zero_points is not None:
        C.tensor(op, "zero_points", zero_points, 1, zp_types)
        C.same(op, "zero_points vs scales shape", tuple(zero_points.shape), tuple(scales.shape))
        offset = zero_points.float()
    scaled = x.float() / scales.float() if div_mode else x.float() * scales.float()
    low, high = {torch.qint8: (-128, 127), torch.quint8: (0, 255),
                 torch.int32: (-2 ** 31, 2 ** 31 - 1)}[dtype]
    out = torch.round(scaled + offset).clamp_(low, high)
    return out.to({torch.qint8: torch.int8, torch.quint8: torch.uint8,
                   torch.int32: torch.int32}[dtype])


# npu_quant_matmul's (scale dtypes, bias dtypes, pertoken_scale given) per output dtype, from
# the docs' table of supported combinations (Atlas A2, x1 and x2 int8, offset None).
_QUANT_MATMUL = {
    torch.bfloat16: ((torch.float32, torch.bfloat16),
                     (torch.int32, torch.bfloat16, torch.float32), (False, True)),
    torch.float16: ((torch.float32,), (torch.int32, torch.float16, torch.float32), (False, True)),
}


def npu_quant_matmul(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None,
                     output_dtype=None):
    """out = (x1 @ x2 [+ int32 bias]) * scale [* pertoken_scale] [+ float bias]."""
    op = "npu_quant_matmul"
    CALLS[op] += 1
    C.tensor(op, "x1", x1, 2, (torch.int8,))
    C.tensor(op, "x2", x2, 2, (torch.int8,), contiguous=False)
    m, k = x1.shape
    C.same(op, "x1 K vs x2 K (x2 is (K, N): the weight transposed)", k, x2.shape[0])
    n = x2.shape[1]
    if output_dtype not in _QUANT_MATMUL:
        C.fail(op, f"the fake implements output_dtype bfloat16 / float16, got {output_dtype}")
    scale_types, bias_types, _ = _QUANT_MATMUL[output_dtype]
    C.tensor(op, "scale", scale, 1, scale_types)
    if scale.numel() not in (1, n):
        C.fail(op, f"scale must have 1 or n = {n} values, got {scale.numel()}")
    if offset is not None:
        C.fail(op, "offset is for int8 output only (the fake implements none)")
    out = (x1.long() @ x2.long())  # (M, N) exact
    if bias is not None:
        C.tensor(op, "bias", bias, 1, bias_types)
        C.same(op, "bias shape", tuple(bias.shape), (n,))
    if pertoken_scale is not None:
        C.tensor(op, "pertoken_scale", pertoken_scale, 1, (torch.float32,))
        C.same(op, "pertoken_scale shape", tuple(pertoken_scale.shape), (m,))
    elif output_dtype == torch.float16 and bias is not None and bias.dtype != torch.int32:
        C.fail(op, "float16 output with a float bias needs pertoken_scale")
    if bias is not None and bias.dtype == torch.int32:
        out = out + bias.long()
    result = out.float() * scale.float()  # (M, N)
    if pertoken_scale is not None:
        result = result * pertoken_scale[:, None]
    if bias is not None and bias.dtype != torch.int32:
        result = result + bias.float()
    return result.to(output_dtype)


_GMM_NONE = ("bias", "offset", "antiquant_scale", "antiquant_offset", "activation_input",
             "activation_quant_scale", "activation_quant_offset", "tuning_config")


def npu_grouped_matmul(x, weight, **kwargs):
    """int8 x: the per-token quantized form below; float x: _moe_ops' float forms."""
    quantized = isinstance(x, list) and x and getattr(x[0], "dtype", None) == torch.int8
    if quantized:
        return _quantized_grouped_matmul(x, weight, **kwargs)
    return _moe_ops.npu_grouped_matmul(x, weight, **kwargs)


def _quantized_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None,
                              antiquant_scale=None, antiquant_offset=None, per_token_scale=None,
                              group_list=None, activation_input=None,
                              activation_quant_scale=None, activation_quant_offset=None,
                              split_item=0, group_type=-1, group_list_type=0, act_type=0,
                              tuning_config=None, output_dtype=None):
    """One int8 x (M, K) split into groups of rows by group_list, one int8 weight
    (E, K, N); y[rows of e] = (x @ w[e]) * scale[e] * per_token_scale[rows]."""
    op = "npu_grouped_matmul"
    CALLS[op] += 1
    given = locals()
    for name in _GMM_NONE:
        if given[name] is not None:
            C.fail(op, f"the fake implements no {name}")
    if act_type != 0:
        C.fail(op, f"the fake implements act_type 0 only, got {act_type}")
    xs, ws = _one(op, "x", x), _one(op, "weight", weight)
    scales, tokens = _one(op, "scale", scale), _one(op, "per_token_scale", per_token_scale)
    C.tensor(op, "x[0]", xs, 2, (torch.int8,))
    C.tensor(op, "weight[0]", ws, 3, (torch.int8,), contiguous=False)
    experts, k, n = ws.shape
    C.same(op, "x K vs weight K (weight is (E, K, N))", xs.shape[1], k)
    C.tensor(op, "scale[0]", scales, 2, (torch.float32, torch.bfloat16))
    C.same(op, "scale shape", tuple(scales.shape), (experts, n))
    C.tensor(op, "per_token_scale[0]", tokens, 1, (torch.float32,))
    C.same(op, "per_token_scale shape", tuple(tokens.shape), (xs.shape[0],))
    if split_item not in (2, 3) or group_type != 0:
        C.fail(op, f"one x split by rows needs split_item 2 or 3 and group_type 0, "
                   f"got {split_item}, {group_type}")
    if output_dtype not in _HALF:
        C.fail(op, f"per-token output_dtype must be bfloat16 / float16, got {output_dtype}")
    ends = _group_ends(op, group_list, group_list_type, experts, xs.shape[0])
    y = torch.empty(xs.shape[0], n, dtype=output_dtype)
    start = 0
    for e, end in enumerate(ends):
        acc = xs[start:end].long() @ ws[e].long()  # (rows, N)
        y[start:end] = (acc.float() * scales[e].float() * tokens[start:end, None]).to(output_dtype)
        start = end
    return [y]


def _dims(op: str, name: str, value) -> int:
    if not isinstance(value, torch.Tensor):
        C.fail(op, f"{name} must be a Tensor, got {type(value).__name__}")
    return value.dim()


def _one(op: str, name: str, value) -> torch.Tensor:
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        C.fail(op, f"{name} must be a list of one tensor in this form, got {value!r}")
    return value[0]


def _group_ends(op, group_list, group_list_type, experts, rows) -> list[int]:
    """group_list (E,) int64: cumulative row ends (type 0) or row counts (type 1)."""
    C.tensor(op, "group_list", group_list, 1, (torch.int64,))
    C.same(op, "group_list length vs experts", group_list.shape[0], experts)
    if group_list_type not in (0, 1):
        C.fail(op, f"group_list_type must be 0 (cumsum) or 1 (counts), got {group_list_type}")
    values = group_list.tolist()
    ends = values if group_list_type == 0 else torch.tensor(values).cumsum(0).tolist()
    if any(b < a for a, b in zip([0] + ends, ends)) or ends[-1] != rows:
        C.fail(op, f"group_list {values} (type {group_list_type}) must end at x's {rows} rows")
    return ends


def npu_format_cast(tensor, acl_format):
    """The layout is not modelled: a copy, after checking the format is ND or FRACTAL_NZ."""
    op = "npu_format_cast"
    CALLS[op] += 1
    C.integer(op, "acl_format", acl_format)
    if acl_format not in (ACL_FORMAT_ND, ACL_FORMAT_FRACTAL_NZ):
        C.fail(op, f"the fake knows ND (2) and FRACTAL_NZ (29), got {acl_format}")
    return tensor.clone()
