"""Linear relaxation (CROWN / DeepPoly-style back-substitution) over the graph a :class:`.propagate.BoundPass` recorded.

To bound one neuron z_j of a site's pre-activation, start from the row e_j and walk the graph backwards: through
an affine op the row becomes its vector-Jacobian product (computed by autograd, batched with ``torch.func.vmap``,
so every op with an affine rule is covered, not only Linear and Conv); through a relu with input bounds l < 0 < u
it takes the upper line u (z - l) / (u - l) where its coefficient is positive and the lower line alpha z
(alpha = 1 when u > -l, else 0) where it is negative; at the input box, or at any op that is neither (its output
box from interval propagation), the linear function is maximised exactly. Rows for -e_j give the lower bound.

Sites are tightened in call order and a tightened pre-activation is what later relus use, so each relu's
relaxation rests on the best bounds known. Only neurons that interval bounds leave undecided (l < 0 < u) are
re-bounded; the work for a site is (such neurons) x (values in the graph before it), refused beyond a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .propagate import Node
from .rules import Interval

DEFAULT_WORK_LIMIT = 2 * 10**7
"""Most (undecided neurons x graph values) the relaxation takes on for one site: a few seconds on one CPU core
(measured: about 13 s per 10^8 on the ResNet-18-like benchmark CNN, float64, one thread)."""

CHUNK_ELEMENTS = 2**23
"""Most row-coefficients held at once per node (64 MiB of float64); neurons are processed in chunks below it."""


@dataclass(frozen=True)
class Refined:
    """The outcome of relaxing one site."""

    interval: Interval
    """Per-element bounds, the intersection with the interval bounds."""
    neurons: int
    """How many neurons were re-bounded (those undecided by interval bounds)."""
    skipped: str | None = None
    """Why the site was not relaxed (over the work limit), or None."""


class Relaxation:
    """Back-substitution over one recorded graph; call :meth:`refine` for each site in call order."""

    def __init__(self, graph: list[Node], work_limit: int = DEFAULT_WORK_LIMIT) -> None:
        self.graph = graph
        self.work_limit = work_limit
        self._backward: dict[int, tuple[object, torch.Tensor] | None] = {}

    def refine(self, node_id: int) -> Refined:
        """Tighter bounds for the undecided neurons of ``node_id`` (stored on the node for later relus)."""
        node = self.graph[node_id]
        lo, hi = node.interval.lo.flatten(), node.interval.hi.flatten()
        undecided = torch.nonzero((lo < 0) & (hi > 0)).flatten()
        if undecided.numel() == 0:
            return Refined(node.interval, 0)
        values = sum(n.interval.lo.numel() for n in self.graph[: node_id + 1])
        work = int(undecided.numel()) * values
        if work > self.work_limit:
            return Refined(
                node.interval,
                0,
                f"{undecided.numel()} undecided neurons x {values} values = {work:.2g} > {self.work_limit:.2g}",
            )
        widest = max(n.interval.lo.numel() for n in self.graph[: node_id + 1])
        chunk = max(1, CHUNK_ELEMENTS // (2 * widest))
        new_lo, new_hi = lo.clone(), hi.clone()
        for start in range(0, int(undecided.numel()), chunk):
            picked = undecided[start : start + chunk]
            upper, lower = self._bounds(node_id, picked)
            new_hi[picked] = torch.minimum(new_hi[picked], torch.nan_to_num(upper, nan=math.inf, posinf=math.inf))
            new_lo[picked] = torch.maximum(new_lo[picked], torch.nan_to_num(lower, nan=-math.inf, neginf=-math.inf))
        node.interval = Interval(new_lo.reshape(node.interval.lo.shape), new_hi.reshape(node.interval.hi.shape))
        return Refined(node.interval, int(undecided.numel()))

    def _bounds(self, node_id: int, neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(upper, lower) bounds of the given flat neurons of a node."""
        shape = tuple(self.graph[node_id].interval.lo.shape)
        count = int(neurons.numel())
        rows = torch.zeros(2 * count, math.prod(shape), dtype=torch.float64)
        index = torch.arange(count)
        rows[index, neurons] = 1.0
        rows[index + count, neurons] = -1.0
        upper = self._maximum(node_id, rows.reshape(2 * count, *shape))
        return upper[:count], -upper[count:]

    def _maximum(self, target: int, rows: torch.Tensor) -> torch.Tensor:
        """Upper bound of <row, value of target> over the domain, per row."""
        pending: dict[int, torch.Tensor] = {target: rows}
        total = torch.zeros(rows.shape[0], dtype=torch.float64)
        unknown = torch.zeros(rows.shape[0], dtype=torch.bool)
        for node_id in range(target, -1, -1):
            coefficients = pending.pop(node_id, None)
            if coefficients is None:
                continue
            # A NaN coefficient (a NaN weight) would read as zero below: such a row bounds nothing.
            unknown |= torch.isnan(coefficients).flatten(1).any(1)
            node = self.graph[node_id]
            if node.kind == "affine" and (backward := self._affine_backward(node_id)) is not None:
                total = total + self._through_affine(node, backward, coefficients, pending)
            elif node.kind == "relu":
                carried, constant = _through_relu(coefficients, self.graph[node.inputs[0]].interval)
                _accumulate(pending, node.inputs[0], carried)
                total = total + constant
            else:
                total = total + _maximise_on_box(coefficients, node.interval)
        return torch.where(unknown | torch.isnan(total), math.inf, total)

    def _through_affine(
        self,
        node: Node,
        backward: tuple[object, torch.Tensor],
        coefficients: torch.Tensor,
        pending: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        vjp, offset = backward
        grads: tuple[torch.Tensor, ...] = torch.func.vmap(vjp)(coefficients)  # type: ignore[arg-type]
        for source, grad in zip(node.inputs, grads):
            _accumulate(pending, source, grad)
        return (coefficients * offset).flatten(1).sum(1)

    def _affine_backward(self, node_id: int) -> tuple[object, torch.Tensor] | None:
        """(vjp function, value at zero inputs) of an affine node; None if autograd cannot take it (then a box)."""
        if node_id not in self._backward:
            node = self.graph[node_id]
            try:
                zeros = [torch.zeros_like(self.graph[i].interval.lo) for i in node.inputs]
                assert node.function is not None
                result = torch.func.vjp(node.function, *zeros)
                self._backward[node_id] = (result[1], result[0].detach())
            except Exception:
                self._backward[node_id] = None
        return self._backward[node_id]


def _accumulate(pending: dict[int, torch.Tensor], node_id: int, coefficients: torch.Tensor) -> None:
    present = pending.get(node_id)
    pending[node_id] = coefficients if present is None else present + coefficients


def _maximise_on_box(coefficients: torch.Tensor, box: Interval) -> torch.Tensor:
    """max of <c, x> over lo <= x <= hi, per row (a zero coefficient ignores an infinite bound)."""
    lo, hi = box.lo.unsqueeze(0), box.hi.unsqueeze(0)
    zero = torch.zeros((), dtype=torch.float64)
    terms = torch.where(coefficients > 0, coefficients * hi, torch.where(coefficients < 0, coefficients * lo, zero))
    return terms.flatten(1).sum(1)


def _through_relu(coefficients: torch.Tensor, bounds: Interval) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients on the relu's input and the constant, for an upper bound of <c, relu(z)>."""
    lo, hi = bounds.lo, bounds.hi
    active, inactive = lo >= 0, hi <= 0
    span = hi - lo
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    slope = torch.where(finite, hi / torch.where(span > 0, span, 1.0), torch.where(torch.isfinite(hi), 0.0, 1.0))
    intercept = torch.where(
        finite, -slope * lo, torch.where(torch.isfinite(hi), hi, -lo)
    )  # -lo is +inf when lo is -inf
    slope = torch.where(active, 1.0, torch.where(inactive, 0.0, slope))
    intercept = torch.where(active | inactive, 0.0, intercept)
    lower_slope = torch.where(active, 1.0, torch.where(inactive, 0.0, (hi >= -lo).to(torch.float64)))
    positive, negative = coefficients.clamp(min=0), coefficients.clamp(max=0)
    carried = positive * slope + negative * lower_slope
    zero = torch.zeros((), dtype=torch.float64)
    constant = torch.where(positive > 0, positive * intercept, zero).flatten(1).sum(1)
    return carried, constant
