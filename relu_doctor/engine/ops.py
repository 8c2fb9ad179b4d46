"""How each aten op moves the unit axis and the provenance of what it produces (the relu family itself is
:mod:`relu_doctor.activations`).

Pure lookup rules, one small function per question, so the observer only forwards. Ops are matched by
their aten name (``relu``, ``relu_``, ``conv2d``, ...) as seen by a dispatch mode under
``torch.inference_mode``, where composite ops such as ``linear`` and ``conv2d`` are not yet decomposed;
the decomposed names (``addmm``, ``convolution``, ``native_batch_norm``) are listed too.
"""

from __future__ import annotations

import enum
from typing import Any

from ..activations import OTHER_ACTIVATION_OPS


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
} | OTHER_ACTIVATION_OPS
_VIEW = {"view", "reshape", "_unsafe_view", "flatten", "unsqueeze", "squeeze", "expand", "_reshape_alias"}
_SUM = {"add", "add_", "sub", "sub_"}
_CONCAT = {"cat", "concat", "stack"}


def op_name(func: Any) -> str:
    """The aten name of an OpOverload without namespace or overload: ``aten.relu_.default`` -> ``relu_``."""
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or str(func)
    return str(name).split(".")[-1]


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


_ROLE_TABLE: tuple[tuple[Role, frozenset[str] | set[str]], ...] = (
    (Role.OTHER_ACTIVATION, OTHER_ACTIVATION_OPS),
    (Role.PRODUCER_CHANNEL, _PRODUCER_CHANNEL),
    (Role.PRODUCER_FEATURE, _PRODUCER_FEATURE),
    (Role.NORM_CHANNEL, _NORM_CHANNEL),
    (Role.NORM_FEATURE, _NORM_FEATURE),
    (Role.POOL, _POOL),
    (Role.ELEMENTWISE, _ELEMENTWISE),
    (Role.VIEW, _VIEW),
    (Role.CONCAT, _CONCAT),
)
