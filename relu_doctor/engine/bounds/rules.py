"""Interval rules for aten ops: from bounds on an op's inputs, sound bounds on its outputs.

Each rule is a small pure function of one :class:`OpCall` (the op, its concrete arguments, and the bounds of
the arguments that depend on the network input) and returns one :class:`Interval` per tensor output, ``None``
for an output it cannot bound, or ``None`` for the whole call when it does not apply (a weight that depends on
the input, batch statistics, ...). The propagation treats anything it has no interval for as unbounded
(``-inf, +inf``) and names the op in a note: a missing rule costs tightness, never soundness.

A rule also says whether its op is *affine* in its bounded inputs for this call (a linear layer with fixed
weights, a reshape, an add, a BatchNorm in eval mode): the linear relaxation (:mod:`.relax`) back-substitutes
through those ops and treats every other op's output as a box.

Bounds are float64 tensors of the output's shape, whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import activations


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds ``lo <= value <= hi`` of one tensor (float64, the tensor's shape)."""

    lo: torch.Tensor
    """Lower bound of every element."""
    hi: torch.Tensor
    """Upper bound of every element."""

    @staticmethod
    def exact(value: torch.Tensor) -> Interval:
        """The bounds of a tensor that does not depend on the input: the tensor itself."""
        v = value.detach().to(torch.float64)
        return Interval(v, v)

    @staticmethod
    def unbounded(like: torch.Tensor) -> Interval:
        """No bound at all, for an output no rule covers."""
        shape = like.shape
        return Interval(
            torch.full(shape, -math.inf, dtype=torch.float64), torch.full(shape, math.inf, dtype=torch.float64)
        )

    def centre_radius(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, radius); where a bound is infinite or NaN the centre is 0 and the radius infinite."""
        centre, radius = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        known = torch.isfinite(centre) & torch.isfinite(radius)
        return torch.where(known, centre, 0.0), torch.where(known, radius, math.inf)

    def scaled(self, factor: Any) -> Interval:
        """Bounds of ``factor * value`` for a scalar or a tensor of fixed factors."""
        if isinstance(factor, torch.Tensor):
            a, b = _mul(self.lo, factor), _mul(self.hi, factor)
            return Interval(torch.minimum(a, b), torch.maximum(a, b))
        if factor >= 0:
            return Interval(_mul(self.lo, factor), _mul(self.hi, factor))
        return Interval(_mul(self.hi, factor), _mul(self.lo, factor))

    def __add__(self, other: Interval) -> Interval:
        return Interval(self.lo + other.lo, self.hi + other.hi)

    def sanitized(self) -> Interval:
        """NaN bounds (inf - inf, 0 * inf) widened to infinite ones: a NaN bound would claim nothing safely."""
        return Interval(
            torch.nan_to_num(self.lo, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
            torch.nan_to_num(self.hi, nan=math.inf, posinf=math.inf, neginf=-math.inf),
        )


class Scratch:
    """One float64 buffer a bound pass reuses for the weight copies its rules need only during one call.

    Converting every weight into a freshly allocated float64 tensor (and |W| into another) costs more than the
    convolutions themselves on a CNN (large allocations are returned to the system and page-faulted back in);
    copying into memory that is already touched does not. A view it returns is valid until the next request.
    """

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.float64)

    def float64(self, tensor: torch.Tensor) -> torch.Tensor:
        """A contiguous float64 copy of ``tensor`` the caller may write (it is overwritten by the next request)."""
        n = tensor.numel()
        if self._buffer.numel() < n or self._buffer.device != tensor.device:
            self._buffer = torch.empty(n, dtype=torch.float64, device=tensor.device)
        view = self._buffer[:n].view(tensor.shape)
        return view.copy_(tensor.detach())

    def release(self) -> None:
        """Free the buffer (the pass is over)."""
        self._buffer = torch.empty(0, dtype=torch.float64)


@dataclass
class OpCall:
    """One op of the forward pass as a rule sees it."""

    func: Any
    """The aten OpOverload."""
    name: str
    """Its name without namespace and overload: ``relu_``, ``conv2d``."""
    args: tuple[Any, ...]
    """Concrete positional arguments (tensors as the model computed them on the centre input)."""
    kwargs: dict[str, Any]
    """Concrete keyword arguments."""
    bounds: Callable[[torch.Tensor], Interval | None]
    """The bounds of a tensor argument, or None when it does not depend on the input (exact)."""
    scratch: Scratch = field(default_factory=Scratch)
    """The pass's reusable float64 buffer for weight copies that do not outlive the rule."""

    def arg(self, index: int, key: str, default: Any = None) -> Any:
        """Positional argument ``index``, else keyword ``key``, else ``default``."""
        return self.args[index] if len(self.args) > index else self.kwargs.get(key, default)

    def interval(self, value: Any) -> Interval:
        """Bounds of any argument: a bounded tensor's, an exact tensor's value, or a number's."""
        if isinstance(value, torch.Tensor):
            found = self.bounds(value)
            return found if found is not None else Interval.exact(value)
        v = torch.tensor(float(value), dtype=torch.float64)
        return Interval(v, v)

    def is_bounded(self, value: Any) -> bool:
        """True for a tensor that depends on the input."""
        return isinstance(value, torch.Tensor) and self.bounds(value) is not None


IntervalRule = Callable[[OpCall], Sequence[Interval | None] | None]
AffinePredicate = Callable[[OpCall], bool]


@dataclass(frozen=True)
class OpRule:
    """What the propagation knows about one op."""

    interval: IntervalRule
    """Bounds of the outputs from bounds of the inputs (None: does not apply to this call)."""
    affine: AffinePredicate
    """Whether the call is affine in its bounded inputs, so the relaxation can back-substitute through it."""


def never(call: OpCall) -> bool:
    """Affine predicate of ops that are not affine."""
    return False


def always(call: OpCall) -> bool:
    """Affine predicate of ops that always are (reshapes, sums, averages)."""
    return True


class RuleTable:
    """Rules by aten op name; :func:`default_rules` builds the standard table, ``register`` extends a copy."""

    def __init__(self, rules: dict[str, OpRule] | None = None) -> None:
        self._rules: dict[str, OpRule] = dict(rules or {})

    def register(self, names: Iterable[str], interval: IntervalRule, affine: AffinePredicate = never) -> None:
        """Use ``interval`` (and ``affine``) for every op in ``names`` (aten names, in-place forms included)."""
        for name in names:
            self._rules[name] = OpRule(interval, affine)

    def get(self, name: str) -> OpRule | None:
        """The rule for an op name, or None."""
        return self._rules.get(name)

    def copy(self) -> RuleTable:
        """An independent table with the same rules."""
        return RuleTable(self._rules)

    def __contains__(self, name: object) -> bool:
        return name in self._rules


# -- helpers ---------------------------------------------------------------------------------------------
def _mul(a: torch.Tensor, b: Any) -> torch.Tensor:
    """a * b with 0 * inf = 0 (a zero factor or a zero bound contributes nothing, even next to an infinity)."""
    product = a * b
    return torch.where(
        torch.isnan(product) & ~torch.isnan(a) & ~torch.isnan(torch.as_tensor(b, dtype=a.dtype)), 0.0, product
    )


def _finite_or(value: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(torch.isfinite(value), value, fill)


def _to64(value: Any) -> Any:
    return value.detach().to(torch.float64) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _substituted(value: Any, call: OpCall, side: str) -> Any:
    """An argument with every bounded tensor replaced by its lower or upper bound, exact floats in float64."""
    if isinstance(value, torch.Tensor):
        found = call.bounds(value)
        return _to64(value) if found is None else getattr(found, side)
    if isinstance(value, (list, tuple)):
        return type(value)(_substituted(v, call, side) for v in value)
    return value


def _tensor_outputs(output: Any) -> list[Any]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [o for o in output if isinstance(o, torch.Tensor)]
    return []


def _bounded_args(call: OpCall) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*call.args, *call.kwargs.values()):
        values = value if isinstance(value, (list, tuple)) else (value,)
        found.extend(v for v in values if isinstance(v, torch.Tensor) and call.bounds(v) is not None)
    return found


def _is_inplace(func: Any) -> bool:
    arguments = func._schema.arguments
    return bool(arguments) and arguments[0].alias_info is not None and arguments[0].alias_info.is_write


# -- rules -----------------------------------------------------------------------------------------------
def monotone(call: OpCall) -> list[Interval | None] | None:
    """Ops nondecreasing in every bounded input: the op applied to the lower bounds and to the upper bounds.

    Covers reshapes, selections, concatenation, pooling by max or by average, sums and means, and monotone
    activations. Integer outputs (indices of a max) get no bound; integer bounded inputs (indices) void the rule.
    """
    if any(not t.is_floating_point() for t in _bounded_args(call)):
        return None
    sides = []
    for side in ("lo", "hi"):
        args = [_substituted(a, call, side) for a in call.args]
        if _is_inplace(call.func) and args and isinstance(args[0], torch.Tensor):
            args[0] = args[0].clone()  # never write into a stored bound
        kwargs = {k: _substituted(v, call, side) for k, v in call.kwargs.items()}
        sides.append(_tensor_outputs(call.func(*args, **kwargs)))
    return [
        Interval(lo.to(torch.float64), hi.to(torch.float64)) if lo.is_floating_point() else None
        for lo, hi in zip(*sides)
    ]


def _when(condition: Callable[[OpCall], bool], rule: IntervalRule) -> IntervalRule:
    def guarded(call: OpCall) -> Sequence[Interval | None] | None:
        return rule(call) if condition(call) else None

    return guarded


def add(call: OpCall) -> list[Interval | None]:
    """a + alpha * b (add), a - alpha * b (sub), b - alpha * a (rsub)."""
    a, b = call.interval(call.args[0]), call.interval(call.arg(1, "other"))
    alpha = call.arg(2, "alpha", 1)
    base = call.name.rstrip("_")
    if base == "rsub":
        return [b + a.scaled(-alpha)]
    return [a + b.scaled(-alpha if base in ("sub", "subtract") else alpha)]


def _product(a: Interval, b: Interval) -> Interval:
    corners = [_mul(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return Interval(
        torch.stack(torch.broadcast_tensors(*corners)).amin(0), torch.stack(torch.broadcast_tensors(*corners)).amax(0)
    )


def mul(call: OpCall) -> list[Interval | None]:
    """a * b by the four corners (exact where one factor is fixed)."""
    return [_product(call.interval(call.args[0]), call.interval(call.arg(1, "other")))]


def div(call: OpCall) -> list[Interval | None] | None:
    """a / b where b's bounds exclude 0 (elementwise; unbounded where they do not); no rounding modes."""
    if call.arg(2, "rounding_mode") is not None:
        return None
    a, b = call.interval(call.args[0]), call.interval(call.arg(1, "other"))
    safe = (b.lo > 0) | (b.hi < 0)
    inverse = Interval(torch.where(safe, 1.0 / b.hi, -math.inf), torch.where(safe, 1.0 / b.lo, math.inf))
    return [_product(a, inverse)]


def neg(call: OpCall) -> list[Interval | None]:
    """-x."""
    x = call.interval(call.args[0])
    return [Interval(-x.hi, -x.lo)]


def absolute(call: OpCall) -> list[Interval | None]:
    """|x|."""
    x = call.interval(call.args[0])
    lo = torch.where(x.lo >= 0, x.lo, torch.where(x.hi <= 0, -x.hi, torch.zeros_like(x.lo)))
    return [Interval(lo, torch.maximum(x.lo.abs(), x.hi.abs()))]


def _matmul(a: Interval, b: Interval, a_exact: bool, b_exact: bool) -> Interval:
    """Interval product of matrices in centre-radius form: |A_c| B_r + A_r |B_c| + A_r B_r around A_c B_c."""
    ac, ar = a.centre_radius()
    bc, br = b.centre_radius()
    centre = torch.matmul(ac, bc)
    radius = torch.zeros_like(centre)
    a_exact = a_exact and not bool(ar.any())  # a NaN in an exact operand has an infinite radius
    b_exact = b_exact and not bool(br.any())
    if not b_exact:
        radius = radius + _radius_matmul(ac.abs(), br)
    if not a_exact:
        radius = radius + _radius_matmul(ar, bc.abs())
    if not a_exact and not b_exact:
        radius = radius + _radius_matmul(ar, br)
    return Interval(centre - radius, centre + radius).sanitized()


def _radius_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # inf * 0 inside a matmul gives NaN: keep infinities out of the product and put them back afterwards.
    finite = torch.matmul(_finite_or(a, 0.0), _finite_or(b, 0.0))
    if bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()):
        return finite
    reaches = torch.matmul((~torch.isfinite(a)).to(a.dtype), (b != 0).to(b.dtype))
    reaches = reaches + torch.matmul((a != 0).to(a.dtype), (~torch.isfinite(b)).to(b.dtype))
    return torch.where(reaches > 0, math.inf, finite)


def matmul(call: OpCall) -> list[Interval | None]:
    """mm, bmm, matmul: interval matrix product."""
    a, b = call.args[0], call.arg(1, "other", call.arg(1, "mat2"))
    return [_matmul(call.interval(a), call.interval(b), not call.is_bounded(a), not call.is_bounded(b))]


def linear(call: OpCall) -> list[Interval | None]:
    """x W^T + b."""
    x, weight, bias = call.args[0], call.args[1], call.arg(2, "bias")
    w = call.interval(weight)
    out = _matmul(
        call.interval(x),
        Interval(w.lo.transpose(-1, -2), w.hi.transpose(-1, -2)),
        not call.is_bounded(x),
        not call.is_bounded(weight),
    )
    return [out if bias is None else out + call.interval(bias)]


def addmm(call: OpCall) -> list[Interval | None]:
    """beta * input + alpha * (m1 @ m2) (addmm, baddbmm, addbmm)."""
    base, m1, m2 = call.args[0], call.args[1], call.args[2]
    product = _matmul(call.interval(m1), call.interval(m2), not call.is_bounded(m1), not call.is_bounded(m2))
    if call.name.startswith("addbmm"):
        product = Interval(product.lo.sum(0), product.hi.sum(0))
    return [call.interval(base).scaled(call.arg(3, "beta", 1)) + product.scaled(call.arg(4, "alpha", 1))]


def convolution(call: OpCall) -> list[Interval | None] | None:
    """conv / conv_transpose with fixed weights: the op on the centre, and with |W| on the radius."""
    x, weight, bias = call.args[0], call.args[1], call.arg(2, "bias")
    if call.is_bounded(weight) or call.is_bounded(bias) or not weight.is_floating_point():
        return None
    rest = call.args[3:]
    centre, radius = call.interval(x).centre_radius()
    w = call.scratch.float64(weight)  # a copy in reused memory, never the weight itself
    out_centre = call.func(centre, w, _to64(bias), *rest, **call.kwargs)
    w = w.abs_()  # |W| in place (w != 0 is unchanged by the abs)
    out_radius = call.func(_finite_or(radius, 0.0), w, None, *rest, **call.kwargs)
    if not bool(torch.isfinite(radius).all()):
        reach = call.func(
            (~torch.isfinite(radius)).to(torch.float64), (w != 0).to(torch.float64), None, *rest, **call.kwargs
        )
        out_radius = torch.where(reach > 0, math.inf, out_radius)
    return [Interval(out_centre - out_radius, out_centre + out_radius).sanitized()]


_BATCH_NORM_LAYOUT = {
    # name: (index of `training` or None when it is always False, index of eps)
    "batch_norm": (5, 7),
    "native_batch_norm": (5, 7),
    "_native_batch_norm_legit": (5, 7),
    "_native_batch_norm_legit_no_training": (None, 6),
    "cudnn_batch_norm": (5, 7),
    "miopen_batch_norm": (5, 7),
}


def batch_norm_affine(call: OpCall) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel of a BatchNorm in eval mode with fixed parameters; None otherwise."""
    training_index, eps_index = _BATCH_NORM_LAYOUT[call.name]
    weight, bias, mean, var = (
        call.arg(i, k) for i, k in ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))
    )
    training = call.arg(training_index, "training", False) if training_index is not None else False
    if (
        training
        or not isinstance(mean, torch.Tensor)
        or not isinstance(var, torch.Tensor)
        or any(call.is_bounded(t) for t in (weight, bias, mean, var))
    ):
        return None
    eps = float(call.arg(eps_index, "eps", 1e-5))
    scale = 1.0 / torch.sqrt(_to64(var) + eps)
    scale = scale * _to64(weight) if weight is not None else scale
    shift = -_to64(mean) * scale + (_to64(bias) if bias is not None else 0.0)
    return scale, shift


def batch_norm(call: OpCall) -> list[Interval | None] | None:
    """BatchNorm with running statistics (eval): a fixed affine map per channel (dim 1)."""
    affine = batch_norm_affine(call)
    x = call.args[0]
    if affine is None or x.dim() < 2:
        return None
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale, shift = (t.reshape(shape) for t in affine)
    out = call.interval(x).scaled(scale)
    return [Interval(out.lo + shift, out.hi + shift)]


def batch_norm_is_affine(call: OpCall) -> bool:
    """Eval-mode BatchNorm with fixed parameters."""
    return batch_norm_affine(call) is not None


def layer_norm(call: OpCall) -> list[Interval | None] | None:
    """LayerNorm with fixed parameters: each normalised value lies in [-sqrt(n - 1), sqrt(n - 1)], whatever the input.

    (Mean 0 and mean square <= 1 over the n normalised values bound each one by sqrt(n - 1).)"""
    x, shape, weight, bias = call.args[0], call.args[1], call.arg(2, "weight"), call.arg(3, "bias")
    if call.is_bounded(weight) or call.is_bounded(bias):
        return None
    n = math.prod(int(s) for s in shape)
    reach = math.sqrt(max(n - 1, 0))
    unit = Interval(
        torch.full(tuple(x.shape), -reach, dtype=torch.float64), torch.full(tuple(x.shape), reach, dtype=torch.float64)
    )
    out = unit.scaled(_to64(weight).expand(x.shape)) if weight is not None else unit
    if bias is not None:
        out = Interval(out.lo + _to64(bias), out.hi + _to64(bias))
    return [out]


def threshold(call: OpCall) -> list[Interval | None]:
    """y = x where x > t, else v."""
    x = call.interval(call.args[0])
    t, v = float(call.arg(1, "threshold")), float(call.arg(2, "value"))
    above_lo, below_hi = x.lo > t, x.hi <= t
    lo = torch.where(above_lo, x.lo, torch.where(below_hi, v, min(v, t)))
    hi = torch.where(below_hi, v, torch.clamp(x.hi, min=v))
    return [Interval(lo, hi)]


def _known_minimum(minimum_at: float, minimum: float) -> IntervalRule:
    """A function decreasing below ``minimum_at`` and increasing above it (GELU, SiLU), with its minimum."""

    def rule(call: OpCall) -> list[Interval | None]:
        x = call.interval(call.args[0])
        f_lo, f_hi = (_tensor_outputs(call.func(v.clone(), *call.args[1:], **call.kwargs))[0] for v in (x.lo, x.hi))
        # A window around the minimum covers approximate forms (GELU's tanh form has its minimum at -0.7523).
        inside = (x.lo <= minimum_at + 0.01) & (x.hi >= minimum_at - 0.01)
        lo = torch.where(inside, minimum, torch.minimum(f_lo, f_hi))
        return [Interval(lo, torch.maximum(f_lo, f_hi)).sanitized()]

    return rule


def where(call: OpCall) -> list[Interval | None] | None:
    """where(cond, a, b): a selection when cond is fixed, else the hull of both branches."""
    cond, a, b = call.args[0], call.args[1], call.args[2]
    if not call.is_bounded(cond):
        return monotone(call)
    ia, ib = call.interval(a), call.interval(b)
    lo, hi = torch.minimum(ia.lo, ib.lo), torch.maximum(ia.hi, ib.hi)
    shape = tuple(cond.shape)
    return [
        Interval(
            lo.expand(torch.broadcast_shapes(shape, lo.shape)).clone(),
            hi.expand(torch.broadcast_shapes(shape, hi.shape)).clone(),
        )
    ]


def masked_fill(call: OpCall) -> list[Interval | None] | None:
    """masked_fill(x, mask, v): a selection when the mask is fixed, else the hull of x and v."""
    x, mask, value = call.args[0], call.args[1], call.args[2]
    if not call.is_bounded(mask):
        return monotone(call)
    ix, iv = call.interval(x), call.interval(value)
    return [Interval(torch.minimum(ix.lo, iv.lo), torch.maximum(ix.hi, iv.hi))]


def copy(call: OpCall) -> list[Interval | None]:
    """dst.copy_(src): dst now holds src."""
    dst, src = call.args[0], call.interval(call.args[1])
    return [Interval(src.lo.expand(dst.shape).clone(), src.hi.expand(dst.shape).clone())]


def _monotone_if(check: Callable[[OpCall], bool]) -> IntervalRule:
    return _when(check, monotone)


def _eval_dropout(call: OpCall) -> bool:
    return not bool(call.arg(2, "train", True))


def _matmul_affine(call: OpCall) -> bool:
    return sum(call.is_bounded(a) for a in call.args[:2]) <= 1


def _linear_affine(call: OpCall) -> bool:
    return not call.is_bounded(call.args[1]) and not call.is_bounded(call.arg(2, "bias"))


def _addmm_affine(call: OpCall) -> bool:
    return sum(call.is_bounded(a) for a in call.args[1:3]) <= 1


def _mul_affine(call: OpCall) -> bool:
    return not (call.is_bounded(call.args[0]) and call.is_bounded(call.arg(1, "other")))


def _div_affine(call: OpCall) -> bool:
    return not call.is_bounded(call.arg(1, "other")) and call.arg(2, "rounding_mode") is None


def _selection_affine(call: OpCall) -> bool:
    # where / masked_fill / index ops are affine when what selects is fixed (the mask, the indices).
    return all(t.is_floating_point() for t in _bounded_args(call))


def _with_inplace(names: Iterable[str]) -> list[str]:
    return [form for name in names for form in (name, name + "_")]


# A table of names: filled lines read better than one name per line.
# fmt: off
_VIEWS = (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "flatten", "unflatten", "permute", "transpose", "t",
    "squeeze", "unsqueeze", "expand", "expand_as", "clone", "contiguous", "alias", "detach", "lift_fresh",
    "_to_copy", "to", "slice", "select", "narrow", "index_select", "index", "gather", "repeat", "flip", "roll",
    "diagonal", "unfold", "movedim", "swapaxes", "split", "split_with_sizes", "unsafe_split", "chunk", "unbind",
    "cat", "concat", "stack", "hstack", "vstack", "constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d",
    "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "im2col", "col2im", "index_put", "scatter_add",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "upsample_trilinear3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "mean", "sum", "cumsum", "trace",
    "fill", "zero",
)
# fmt: on
"""Affine ops (given fixed indices / masks) that are also nondecreasing: monotone bounds, and affine."""

# A table of names: filled lines read better than one name per line.
# fmt: off
_MONOTONE_NONLINEAR = (
    "relu", "relu6", "hardtanh", "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "max", "min", "amax",
    "amin", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "sort", "topk", "kthvalue", "median",
    "cummax", "cummin", "logcumsumexp", "logsumexp", "sigmoid", "tanh", "exp", "exp2", "expm1", "log", "log2",
    "log10", "log1p", "sqrt", "erf", "hardsigmoid", "log_sigmoid", "selu", "floor", "ceil",
    "round", "trunc", "sign", "atan", "asinh", "softsign",
)
# fmt: on
"""Ops nondecreasing in every floating input (with fixed other arguments), not affine."""


def default_rules() -> RuleTable:
    """The standard table: linear layers, convolutions, eval BatchNorm, LayerNorm, arithmetic, reshapes,
    selections, pooling, reductions and monotone activations (the relu family among them)."""
    table = RuleTable()
    table.register(_with_inplace(_VIEWS), monotone, _selection_affine)
    table.register(_with_inplace(_MONOTONE_NONLINEAR), monotone)
    table.register(
        _with_inplace(["dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"]),
        _when(_eval_dropout, monotone),
        _eval_dropout,
    )
    table.register(_with_inplace(["add", "sub", "subtract", "rsub"]), add, always)
    table.register(_with_inplace(["mul", "multiply"]), mul, _mul_affine)
    table.register(_with_inplace(["div", "divide", "true_divide"]), div, _div_affine)
    table.register(_with_inplace(["neg", "negative"]), neg, always)
    table.register(_with_inplace(["abs"]), absolute)
    table.register(["mm", "bmm", "matmul"], matmul, _matmul_affine)
    table.register(["linear"], linear, _linear_affine)
    table.register(_with_inplace(["addmm", "baddbmm", "addbmm"]), addmm, _addmm_affine)
    convs = [
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "_convolution",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "mkldnn_convolution",
        "_conv_depthwise2d",
    ]
    table.register(
        convs, convolution, lambda call: not call.is_bounded(call.args[1]) and not call.is_bounded(call.arg(2, "bias"))
    )
    table.register(list(_BATCH_NORM_LAYOUT), batch_norm, batch_norm_is_affine)
    table.register(["layer_norm", "native_layer_norm"], layer_norm)
    table.register(_with_inplace(["threshold"]), threshold)
    table.register(_with_inplace(["leaky_relu"]), _monotone_if(lambda c: float(c.arg(1, "negative_slope", 0.01)) >= 0))
    table.register(_with_inplace(["elu"]), _monotone_if(_elu_monotone))
    table.register(_with_inplace(["celu"]), _monotone_if(lambda c: float(c.arg(1, "alpha", 1.0)) > 0))
    table.register(_with_inplace(["softplus"]), _monotone_if(lambda c: float(c.arg(1, "beta", 1.0)) > 0))
    # Global minima rounded down (GELU's tanh form is within 1e-4 of the exact one).
    table.register(_with_inplace(["gelu"]), _known_minimum(-0.7518, -0.1701))
    table.register(_with_inplace(["silu"]), _known_minimum(-1.2785, -0.2785))
    table.register(_with_inplace(["hardswish"]), _known_minimum(-1.5, -0.3751))
    table.register(_with_inplace(["where"]), where, _selection_affine)
    table.register(_with_inplace(["masked_fill"]), masked_fill, _selection_affine)
    table.register(["copy_", "copy"], copy)
    return table


def _elu_monotone(call: OpCall) -> bool:
    alpha, scale, input_scale = (
        float(call.arg(i, k, 1.0)) for i, k in ((1, "alpha"), (2, "scale"), (3, "input_scale"))
    )
    return alpha >= 0 and scale >= 0 and input_scale >= 0


RELU_RELAXED = frozenset({"relu", "relu_"})
"""Ops the linear relaxation relaxes as a relu (every other nonlinear op's output is a box there)."""


def is_plain_relu(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """relu itself, or a form that computes exactly relu: threshold(0, 0), clamp_min(0), clamp(min=0)."""
    if name in RELU_RELAXED:
        return True
    if name.startswith("threshold") and activations.is_relu_site(name, args, kwargs):
        return True
    return activations.is_relu_like_uncounted(name, args, kwargs)
