"""Which aten operations are relu sites, which are other activations, and how each op moves the unit axis.

Pure lookup rules, one small function per question, so the observer only forwards. Ops are matched by
their aten name (``relu``, ``relu_``, ``conv2d``, ...) as seen by a dispatch mode under
``torch.inference_mode``, where composite ops such as ``linear`` and ``conv2d`` are not yet decomposed;
the decomposed names (``addmm``, ``convolution``, ``native_batch_norm``) are listed too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any


class Layout(enum.Enum):
    """Where the units of an activation live."""

    CHANNEL_FIRST = "channel-first"
    """(N, C, *spatial): a conv, norm or pooling output; units are channels (dim 1)."""
    FEATURE_LAST = "feature-last"
    """(N, F) or (N, T, F): a linear/matmul output; units are features (last dim)."""


class Role(enum.Enum):
    """What an op does to the provenance of the tensor it produces."""

    RELU_SITE = "relu-site"
    OTHER_ACTIVATION = "other-activation"
    PRODUCER_CHANNEL = "producer-channel"
    PRODUCER_FEATURE = "producer-feature"
    NORM_CHANNEL = "norm-channel"
    NORM_FEATURE = "norm-feature"
    POOL = "pool"
    ELEMENTWISE = "elementwise"
    VIEW = "view"
    SUM = "sum"
    CONCAT = "concat"
    OTHER = "other"


_RELU_SITES = {"relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_", "threshold", "threshold_"}
_OTHER_ACTIVATIONS = {
    "leaky_relu",
    "leaky_relu_",
    "prelu",
    "_prelu_kernel",
    "rrelu",
    "rrelu_",
    "rrelu_with_noise",
    "gelu",
    "gelu_",
    "elu",
    "elu_",
    "selu",
    "selu_",
    "celu",
    "celu_",
    "silu",
    "silu_",
    "mish",
    "mish_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "softplus",
    "glu",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
}
_PRODUCER_CHANNEL = {
    "conv1d",
    "conv2d",
    "conv3d",
    "convolution",
    "_convolution",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "mkldnn_convolution",
    "cudnn_convolution",
    "_conv_depthwise2d",
}
_PRODUCER_FEATURE = {"linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "_addmm_activation", "einsum"}
_NORM_CHANNEL = {
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "instance_norm",
    "group_norm",
    "native_group_norm",
}
_NORM_FEATURE = {"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "embedding"}
_POOL = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "_upsample_nearest_exact2d",
    "mean",
}
_ELEMENTWISE = {
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "dropout",
    "native_dropout",
    "feature_dropout",
    "alpha_dropout",
    "clone",
    "contiguous",
    "_to_copy",
    "to",
    "neg",
    "abs",
    "detach",
    "alias",
    "lift_fresh",
    "copy_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "pow",
    "exp",
    "sqrt",
    "rsqrt",
} | _OTHER_ACTIVATIONS
_VIEW = {"view", "reshape", "_unsafe_view", "flatten", "unsqueeze", "squeeze", "expand", "_reshape_alias"}
_SUM = {"add", "add_", "sub", "sub_"}
_CONCAT = {"cat", "concat", "stack"}


def op_name(func: Any) -> str:
    """The aten name of an OpOverload without namespace or overload: ``aten.relu_.default`` -> ``relu_``."""
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or str(func)
    return str(name).split(".")[-1]


def is_relu_site(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """True for relu-family calls: relu, relu6, hardtanh(0, 6) and threshold(0, 0)."""
    if name not in _RELU_SITES:
        return False
    if name.startswith("hardtanh"):
        low = _arg(args, kwargs, 1, "min_val", -1.0)
        high = _arg(args, kwargs, 2, "max_val", 1.0)
        return bool(low == 0 and high == 6)
    if name.startswith("threshold"):
        return bool(_arg(args, kwargs, 1, "threshold", None) == 0 and _arg(args, kwargs, 2, "value", None) == 0)
    return True


def relu_cap(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> float:
    """The upper clamp of a relu site's output: 6 for relu6 and hardtanh(0, 6), infinity for the others."""
    if name.startswith("hardtanh"):
        return float(_arg(args, kwargs, 2, "max_val", 1.0))
    if name.startswith("relu6"):
        return 6.0
    return math.inf


FUSED_RELU = {
    "rnn_relu": "nn.RNN(nonlinearity='relu') runs its relu inside a fused kernel",
    "rnn_relu_cell": "nn.RNNCell(nonlinearity='relu') runs its relu inside a fused kernel",
    "_transformer_encoder_layer_fwd": "a TransformerEncoderLayer ran its fused fast path (e.g. scripted)",
    "_addmm_activation": "a fused linear + activation kernel ran",
}
"""Ops that compute a relu inside one kernel, where no observer can see the pre-activation: blind spots."""


def fused_relu_blind_spot(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Why the op hides a relu from observation, or None (``_addmm_activation`` only when it is a relu)."""
    if name == "_addmm_activation" and _arg(args, kwargs, 4, "use_gelu", False):
        return None
    return FUSED_RELU.get(name)


def relu_like_uncounted(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """How a relu-like op that is not a relu site reads (``clamp(min=0)``, ``clamp(min=0, max=6)``,
    ``hardtanh(0, 1)``), or None. Such ops compute a (clipped) relu but are not counted: a blind spot to report."""
    if name in {"clamp_min", "clamp_min_"}:
        return "clamp(min=0)" if _arg(args, kwargs, 1, "min", None) == 0 else None
    if name in {"clamp", "clamp_"}:
        low, high = _arg(args, kwargs, 1, "min", None), _arg(args, kwargs, 2, "max", None)
        if isinstance(low, bool) or not isinstance(low, (int, float)) or low != 0:
            return None
        return "clamp(min=0)" if high is None else f"clamp(min=0, max={_number(high)})"
    if name in {"hardtanh", "hardtanh_"}:  # (0, 6) is relu6, a site
        low, high = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        return f"hardtanh(0, {_number(high)})" if low == 0 and high != 6 else None
    if name in {"threshold", "threshold_"}:  # (0, 0) is a relu, a site
        threshold, value = _arg(args, kwargs, 1, "threshold", None), _arg(args, kwargs, 2, "value", None)
        return f"threshold(0, {_number(value)})" if threshold == 0 and value != 0 else None
    return None


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def role_of(name: str) -> Role:
    """How an op (by aten name) transforms provenance; relu sites are decided by :func:`is_relu_site`."""
    for role, names in _ROLE_TABLE:
        if name in names:
            return role
    return Role.OTHER


def is_sum(name: str) -> bool:
    """Ops that add two tensors (a residual connection when both come from the network)."""
    return name in _SUM


def is_concat(name: str) -> bool:
    """Ops that join tensors along an axis."""
    return name in _CONCAT


def display_op(name: str) -> str:
    """The op as users write it: relu_ -> relu (in-place), hardtanh -> relu6."""
    base = name.rstrip("_")
    return "relu6" if base == "hardtanh" else base


_ROLE_TABLE: tuple[tuple[Role, set[str]], ...] = (
    (Role.OTHER_ACTIVATION, _OTHER_ACTIVATIONS),
    (Role.PRODUCER_CHANNEL, _PRODUCER_CHANNEL),
    (Role.PRODUCER_FEATURE, _PRODUCER_FEATURE),
    (Role.NORM_CHANNEL, _NORM_CHANNEL),
    (Role.NORM_FEATURE, _NORM_FEATURE),
    (Role.POOL, _POOL),
    (Role.ELEMENTWISE, _ELEMENTWISE),
    (Role.VIEW, _VIEW),
    (Role.CONCAT, _CONCAT),
)


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, key: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(key, default)
