"""The relu family in one place: which calls are counted as sites, and everything each stage asks about them.

The observer (which aten op is a site, its cap, its module class), the TorchScript/torch.export site finder of
``loading`` (the same rule on a graph's constants), the reducers (what "fires" means), the fix simulations and the
repair (which members may become a LeakyReLU) and the report (how a member is named) all read this table. Adding a
member is one :class:`Member` in :data:`FAMILY`; a relu-like op that should be *reported but not counted* is one
:class:`UncountedRule` in :data:`UNCOUNTED_RELU_LIKE`.

A member's aten op is matched with its scalar arguments (``hardtanh`` is a site only as ``hardtanh(0, 6)``, what
``nn.ReLU6`` runs), read positionally or by keyword with the op's own defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FIRES_ABOVE = 0.0
"""A unit fires at a position when its pre-activation is above this. Every member outputs 0 exactly where its unit
does not fire, so the reducers count firings on the output as well as on the input (an in-place op leaves only
the output); ``tests/test_activations.py`` holds every member to it."""
LEAKY_SLOPE = 0.01
"""Negative slope of the LeakyReLU a swappable member becomes (PyTorch's default)."""


@dataclass(frozen=True)
class Param:
    """A scalar argument a member must have: position, keyword, the op's default, and the required value."""

    index: int
    """Position among the op's arguments (0 is the input)."""
    key: str
    """Keyword name of the argument."""
    default: Any
    """The op's default when the call omits it (None: no default, the call must pass it)."""
    required: float
    """The value the call must have for the op to be this member."""


@dataclass(frozen=True)
class Member:
    """One relu-family member: the ops that compute it and what every stage needs to know about it."""

    name: str
    """Name in docs and messages, e.g. ``hardtanh(0, 6)``."""
    ops: frozenset[str]
    """aten op names (in-place variants included)."""
    display: str
    """How users call it in reports: aten's hardtanh(0, 6) is relu6."""
    cap: float
    """Upper clamp of its output (infinity when unbounded)."""
    modules: tuple[type[nn.Module], ...] = ()
    """Module classes that run it (a module matches when its attributes give the required params)."""
    params: tuple[Param, ...] = ()
    """Scalar arguments that must have given values for the op to be this member."""
    module_params: tuple[str, ...] = ()
    """Module attributes holding ``params`` (same order), for matching a module instance."""
    swappable: bool = False
    """May become a LeakyReLU (fix --strategy leaky, the simulations): false when that would drop an upper clip."""

    def activation(self, pre: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
        """The member's output for a finite pre-activation, ``clamp(pre, FIRES_ABOVE, cap)`` (what reducers sum);
        ``in_place`` overwrites ``pre`` with it."""
        cap = None if math.isinf(self.cap) else self.cap
        return pre.clamp_(min=FIRES_ABOVE, max=cap) if in_place else pre.clamp(min=FIRES_ABOVE, max=cap)

    def shown_as(self, aten_name: str) -> str:
        """The op as users know it, a trailing ``_`` marking an in-place call: aten's hardtanh_(0, 6) is relu6_."""
        return f"{self.display}_" if aten_name.endswith("_") else self.display

    def matches_module(self, module: nn.Module) -> bool:
        """True when ``module`` runs this member (its class is one of :attr:`modules`, with the required params)."""
        if not isinstance(module, self.modules):
            return False
        values = tuple(getattr(module, name, None) for name in self.module_params)
        return all(value == p.required for value, p in zip(values, self.params))

    def matches(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """True when a call of one of :attr:`ops` with these arguments is this member."""
        return all(_arg(args, kwargs, p.index, p.key, p.default) == p.required for p in self.params)

    def matches_scalars(self, scalars: Sequence[Any]) -> bool | None:
        """The same test on a graph's constants (``scalars[i]`` is param i); None when one is unknown."""
        if not self.params:
            return True
        if any(value is None for value in scalars):
            return None
        return tuple(float(value) for value in scalars) == tuple(p.required for p in self.params)


FAMILY: tuple[Member, ...] = (
    Member("relu", frozenset({"relu", "relu_"}), "relu", math.inf, (nn.ReLU,), swappable=True),
    Member("relu6", frozenset({"relu6", "relu6_"}), "relu6", 6.0, (nn.ReLU6,)),
    Member(
        "hardtanh(0, 6)",
        frozenset({"hardtanh", "hardtanh_"}),
        "relu6",
        6.0,
        (nn.Hardtanh,),
        params=(Param(1, "min_val", -1.0, 0.0), Param(2, "max_val", 1.0, 6.0)),
        module_params=("min_val", "max_val"),
    ),
    Member(
        "hardtanh(0, 1)",
        frozenset({"hardtanh", "hardtanh_"}),
        "hardtanh(0,1)",
        1.0,
        (nn.Hardtanh,),
        params=(Param(1, "min_val", -1.0, 0.0), Param(2, "max_val", 1.0, 1.0)),
        module_params=("min_val", "max_val"),
    ),
    Member(
        "threshold(0, 0)",
        frozenset({"threshold", "threshold_"}),
        "threshold",
        math.inf,
        (nn.Threshold,),
        params=(Param(1, "threshold", None, 0.0), Param(2, "value", None, 0.0)),
        module_params=("threshold", "value"),
        swappable=True,
    ),
)
"""Every counted member. nn.ReLU6 is an nn.Hardtanh(0, 6) and runs aten ``hardtanh``."""

FAMILY_OPS = frozenset(op for member in FAMILY for op in member.ops)
"""Every aten op name that may be a site (its arguments decide)."""
SWAPPABLE_OPS = frozenset(op for member in FAMILY if member.swappable for op in member.ops)
"""Ops a LeakyReLU can replace (relu6/hardtanh are not: a LeakyReLU would also remove their upper clip)."""
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = tuple(dict.fromkeys(c for m in FAMILY for c in m.modules))
"""Module classes that may run a member (an instance is a site only when its op call is one)."""
ACTIVATION_CLASS_NAMES = frozenset(c.__name__ for c in ACTIVATION_MODULES)
"""Their class names, as a TorchScript module keeps them (``original_name``)."""
MEMBERS_BY_NAME = {member.name: member for member in FAMILY}
"""Each member by its :attr:`Member.name` (what an observed site and a stats file record)."""
FUNCTION_ALIASES = {"_threshold": "threshold"}
"""Torch functions named unlike their aten op (``F.threshold`` is the Python function ``_threshold``)."""
FUNCTION_NAMES = FAMILY_OPS | FUNCTION_ALIASES.keys()
"""Names of the torch functions and tensor methods that may run a member, as a TorchFunctionMode sees them; their
arguments sit where the aten op's do, so :func:`member_of` reads them alike."""
SWAP_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU,)
"""Module classes ``fix --strategy leaky`` replaces by nn.LeakyReLU (exact type; subclasses may do more)."""


@dataclass(frozen=True)
class UncountedRule:
    """A relu-like call that is *not* counted as a site, reported as a blind spot instead."""

    ops: frozenset[str]
    """aten op names the rule looks at."""
    params: tuple[Param, ...]
    """Scalar arguments that make the call relu-like (``required`` None-able through :attr:`unbounded`)."""
    unbounded: tuple[Param, ...] = ()
    """Arguments that must be absent (None) for the call to be relu-like, e.g. clamp's max."""
    label: str = ""
    """How the warning names it, e.g. ``clamp(min=0)``; ``{key}`` shows the value of a :attr:`shown` argument."""
    shown: tuple[Param, ...] = ()
    """Arguments whose values the label shows (e.g. clamp's max)."""

    def describe(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        """The label with this call's values, e.g. ``clamp(min=0, max=6)``."""
        values = {p.key: _arg(args, kwargs, p.index, p.key, p.default) for p in self.shown}
        return self.label.format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in values.items()})

    def matches(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """True when this call of ``name`` computes a relu-like function this rule describes."""
        if name not in self.ops:
            return False
        if any(_arg(args, kwargs, p.index, p.key, p.default) != p.required for p in self.params):
            return False
        return all(_arg(args, kwargs, p.index, p.key, p.default) is None for p in self.unbounded)


UNCOUNTED_RELU_LIKE: tuple[UncountedRule, ...] = (
    UncountedRule(frozenset({"clamp_min", "clamp_min_"}), (Param(1, "min", None, 0.0),), label="clamp_min(0)"),
    UncountedRule(
        frozenset({"clamp", "clamp_"}),
        (Param(1, "min", None, 0.0),),
        unbounded=(Param(2, "max", None, 0.0),),
        label="clamp(min=0)",
    ),
    UncountedRule(
        frozenset({"clamp", "clamp_"}),
        (Param(1, "min", None, 0.0),),
        label="clamp(min=0, max={max})",
        shown=(Param(2, "max", None, 0.0),),
    ),
    # hardtanh(0, 6) is a member (nn.ReLU6) and is matched first; any other upper bound is a clipped relu.
    UncountedRule(
        frozenset({"hardtanh", "hardtanh_"}),
        (Param(1, "min_val", -1.0, 0.0),),
        label="hardtanh(0, {max_val})",
        shown=(Param(2, "max_val", 1.0, 0.0),),
    ),
)
"""Relu-like calls reported as "computes a relu but is not counted" (the observer's warnings)."""

FUSED_RELU = {
    "rnn_relu": "nn.RNN(nonlinearity='relu') runs its relu inside a fused kernel",
    "rnn_relu_cell": "nn.RNNCell(nonlinearity='relu') runs its relu inside a fused kernel",
    "_transformer_encoder_layer_fwd": "a TransformerEncoderLayer ran its fused fast path (e.g. scripted)",
    "_addmm_activation": "a fused linear + activation kernel ran",
}
"""Ops that compute a relu inside one kernel, where no observer can see the pre-activation: blind spots."""

OTHER_ACTIVATION_OPS = frozenset(
    {
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
)
"""Other activations: counted by name in the report ("other activations"), never as sites."""


def member_of(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Member | None:
    """The member an aten call is, or None when it is not a relu site."""
    return next((m for m in FAMILY if name in m.ops and m.matches(args, kwargs)), None)


def member_of_module(module: nn.Module) -> Member | None:
    """The member an activation module runs, or None (an nn.Hardtanh(-1, 1) runs none)."""
    return next((m for m in FAMILY if m.matches_module(module)), None)


def member_for_op(name: str) -> Member:
    """The first member an aten op can be: what a stats file written before sites recorded their member meant."""
    return next(m for m in FAMILY if name in m.ops)


def is_relu_site(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """True for relu-family calls: relu, relu6, hardtanh(0, 6) and threshold(0, 0)."""
    return name in FAMILY_OPS and member_of(name, args, kwargs) is not None


def is_relu_family(op: str, scalars: Sequence[Any]) -> bool | None:
    """Whether aten ``op`` with a graph's scalar arguments is a relu site; None when the arguments are unknown."""
    candidates = [m for m in FAMILY if op in m.ops]
    if not candidates:
        return False
    verdicts = [m.matches_scalars(scalars) for m in candidates]
    if any(verdicts):
        return True
    return None if None in verdicts else False


def params_of(op: str) -> tuple[Param, ...]:
    """The scalar arguments that decide whether aten ``op`` is a member (empty when none does, or none is needed)."""
    return next((m.params for m in FAMILY if op in m.ops), ())


def uncounted_relu_like(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> UncountedRule | None:
    """The rule of :data:`UNCOUNTED_RELU_LIKE` this call matches, or None."""
    return next((rule for rule in UNCOUNTED_RELU_LIKE if rule.matches(name, args, kwargs)), None)


def is_relu_like_uncounted(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """clamp(min=0) (with or without max) and hardtanh(0, max != 6) compute a (clipped) relu but are not relu
    sites: blind spots to report."""
    return uncounted_relu_like(name, args, kwargs) is not None


def fused_relu_blind_spot(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Why the op hides a relu from observation, or None (``_addmm_activation`` only when it is a relu)."""
    if name == "_addmm_activation" and _arg(args, kwargs, 4, "use_gelu", False):
        return None
    return FUSED_RELU.get(name)


def display_op(name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> str:
    """An op as users write it, without the in-place ``_``: a member's display name (aten's hardtanh(0, 6) is
    relu6), any other op its aten name."""
    member = member_of(name, args, kwargs or {}) if name in FAMILY_OPS else None
    return member.display if member is not None else name.rstrip("_")


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, key: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(key, default)
