"""Counters combined over the ranks of a torchrun job (torch.distributed collectives over a gloo group).

Counts and sums are summed, maxima maxed, so the combined counters equal a single-process scan (the counters are
small and travel through the CPU whatever the device). Before combining, the ranks agree on failure (one rank's
error fails every rank, with that rank's message) and check that every rank saw the same sites in the same order.
Which rank runs which batch, and the process group, are the workflow's (:mod:`relu_doctor.workflow.distributed`).
torch.distributed is imported inside the functions: it is only needed once a job combines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ObservationError, first_line

if TYPE_CHECKING:
    from .counters import UnitAccumulator
    from .observe import ObservedSite, ReluObserver

MAXED = frozenset({"max_preactivation"})
"""Counters combined with a max over ranks; every other counter is summed."""


def combine_counters(observer: ReluObserver, samples: int, meter: Any = None, group: Any = None) -> int:
    """Collective: replace this rank's counters by the sums (maxima) over every rank; returns the total samples.

    Also unions the observer's warnings, other-activation counts and called modules, and sums ``meter``'s
    input statistics when given, so the report every rank builds is the single-process one. ``group``: the process
    group (None: the default one, which must then be gloo; the training watch passes a gloo group of its own).
    """
    agree_on_failure(None, group)
    _check_same_sites(observer.sites, group)
    for site in observer.sites:
        site.counters = _all_reduced(site.counters, group)
    _merge_side_tables(observer, group)
    if meter is not None:
        _sum_meter(meter, group)
    return int(_all_reduce_sum([samples], group)[0])


def agree_on_failure(error: BaseException | None, group: Any = None) -> None:
    """Collective: raise on every rank when any rank failed, with the first failing rank's message."""
    import torch.distributed as dist

    message = None if error is None else first_line(error, None) or type(error).__name__
    messages: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(messages, message, group=group)
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if failed:
        rank, text = failed[0]
        raise ObservationError(f"rank {rank} of {len(messages)} failed: {text}") from error


def _check_same_sites(sites: Sequence[ObservedSite], group: Any = None) -> None:
    import torch.distributed as dist

    keys = [s.identity for s in sites]
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, keys, group=group)
    for rank, other in enumerate(everyone):
        if other != everyone[0]:
            raise ObservationError(
                f"rank {rank} saw {len(other)} relu sites, rank 0 saw {len(everyone[0])} "
                f"(first difference: {_first_difference(everyone[0], other)}); the forward pass depends on the data, "
                "so shards cannot be combined: scan in one process, or use --save-stats per shard and check the sites"
            )


def _first_difference(ours: list[Any], theirs: list[Any]) -> str:
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"site {index}: {a} vs {b}"
    return f"site {min(len(ours), len(theirs))} exists on one rank only"


def _all_reduced(counters: UnitAccumulator, group: Any = None) -> UnitAccumulator:
    """The counters summed (maxima maxed) over ranks, as a CPU accumulator (UnitAccumulator.from_tensors)."""
    import torch.distributed as dist

    tensors = {name: t.detach().cpu().clone() for name, t in counters.tensors().items()}
    for name, tensor in tensors.items():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if name in MAXED else dist.ReduceOp.SUM, group=group)
    return type(counters).from_tensors(tensors)


def _merge_side_tables(observer: ReluObserver, group: Any = None) -> None:
    import torch.distributed as dist

    mine = (dict(observer.other_activations), list(observer.warnings), sorted(observer.tracker.ever_called))
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    observer.other_activations.clear()
    for activations, warnings, called in everyone:
        observer.other_activations.update(activations)
        observer.warnings.update(dict.fromkeys(warnings))
        observer.tracker.ever_called.update(called)


def _sum_meter(meter: Any, group: Any = None) -> None:
    values, total, squares = _all_reduce_sum([meter.values, meter.total, meter.squares], group)
    meter.values, meter.total, meter.squares = int(values), float(total), float(squares)


def _all_reduce_sum(numbers: list[float], group: Any = None) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(numbers, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.tolist()
