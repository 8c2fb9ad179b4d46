"""Scale-out under ``torchrun``: each rank scans its shard of the probe, counters are combined with all_reduce.

Batches are dealt round-robin (batch ``i`` goes to rank ``i % WORLD_SIZE``), so every batch is the same batch a
single process would run and the combined counters equal a single-process scan: counts and sums are summed,
maxima maxed, over a gloo group (the counters are small and travel through the CPU whatever the device).
Before combining, the ranks agree on failure (one rank's error fails every rank, with that rank's message) and
check that every rank saw the same sites in the same order. Every rank then builds the same report, so every
rank exits with the same code; only rank 0 writes it (:func:`is_primary`).

This module imports torch lazily: :func:`rank_info` and :func:`is_primary` are safe on the CLI's fast paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ObservationError, UsageError

if TYPE_CHECKING:
    from .counters import UnitAccumulator
    from .observe import ObservedSite, ReluObserver

T = TypeVar("T")

MAXED = frozenset({"max_preactivation"})
"""Counters combined with a max over ranks; every other counter is summed."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a torchrun job."""

    rank: int
    """Global rank, 0 .. world_size - 1 (RANK)."""
    world_size: int
    """Number of processes in the job (WORLD_SIZE)."""
    local_rank: int = 0
    """Rank on this machine, which picks the GPU (LOCAL_RANK)."""


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's place in a torchrun job, or None outside one (WORLD_SIZE unset or 1)."""
    env = os.environ if environ is None else environ
    world = _env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return None
    rank, local = _env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}); launch with torchrun")
    return RankInfo(rank, world, local)


def is_primary(environ: Mapping[str, str] | None = None) -> bool:
    """True on the process that writes reports and files: rank 0, or the only process."""
    info = rank_info(environ)
    return info is None or info.rank == 0


def rank_device(device: Any, info: RankInfo | None) -> Any:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun, so each rank uses its own GPU."""
    import torch

    if info is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def shard(batches: Iterable[T], info: RankInfo) -> Iterator[T]:
    """This rank's batches: every ``world_size``-th one, starting at its rank."""
    for index, batch in enumerate(batches):
        if index % info.world_size == info.rank:
            yield batch


def check_enough_batches(batches: int, info: RankInfo | None) -> None:
    """Every rank needs at least one batch; say how to get there when the probe is too small."""
    if info is not None and batches < info.world_size:
        raise UsageError(
            f"the probe has {batches} batch(es) for {info.world_size} ranks; every rank needs one: "
            f"pass a smaller --batch-size, more --samples, or fewer processes (--nproc-per-node)"
        )


@contextlib.contextmanager
def process_group(info: RankInfo | None) -> Iterator[None]:
    """A gloo process group for the job (set up from torchrun's MASTER_ADDR/PORT), torn down afterwards."""
    if info is None:
        yield
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def torchrun_scan(info: RankInfo | None) -> Iterator[ShardedScan | None]:
    """The process group and this rank's :class:`ShardedScan` for the scan inside; None outside torchrun."""
    if info is None:
        yield None
        return
    with process_group(info):
        sharded = ShardedScan(info)
        with sharded.failures_shared():
            yield sharded


class ShardedScan:
    """One rank's part of a torchrun scan: which batches it runs, and the collective that combines counters.

    Use ``with sharded.failures_shared(): scan(model, sharded.batches(probe), combine=sharded.combine)``.
    """

    def __init__(self, info: RankInfo, group: Any = None) -> None:
        self.info = info
        self.group = group
        """The process group of the collectives (None: the default group, which must then be gloo)."""
        self._agreed = False

    def batches(self, batches: Iterable[T]) -> Iterator[T]:
        """This rank's shard of ``batches``."""
        return shard(batches, self.info)

    def combine(self, observer: ReluObserver, samples: int, meter: Any = None) -> int:
        """Collective: replace this rank's counters by the sums (maxima) over every rank; returns the total samples.

        Also unions the observer's warnings, other-activation counts and called modules, and sums ``meter``'s
        input statistics when given, so the report every rank builds is the single-process one.
        """
        self._agreed = True
        agree_on_failure(None, self.group)
        _check_same_sites(observer.sites, self.group)
        for site in observer.sites:
            site.counters = _all_reduced(site.counters, self.group)
        _merge_side_tables(observer, self.group)
        if meter is not None:
            _sum_meter(meter, self.group)
        return int(_all_reduce_sum([samples], self.group)[0])

    @contextlib.contextmanager
    def failures_shared(self) -> Iterator[None]:
        """A failure on this rank before combining fails every rank with its message (no rank hangs)."""
        try:
            yield
        except Exception as error:
            if not self._agreed:
                self._agreed = True
                agree_on_failure(error, self.group)
            raise


def agree_on_failure(error: BaseException | None, group: Any = None) -> None:
    """Collective: raise on every rank when any rank failed, with the first failing rank's message."""
    import torch.distributed as dist

    message = None if error is None else (str(error).splitlines() or [type(error).__name__])[0]
    messages: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(messages, message, group=group)
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if failed:
        rank, text = failed[0]
        raise ObservationError(f"rank {rank} of {len(messages)} failed: {text}") from error


def _check_same_sites(sites: Sequence[ObservedSite], group: Any = None) -> None:
    import torch.distributed as dist

    keys = [site_key(s) for s in sites]
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, keys, group=group)
    for rank, other in enumerate(everyone):
        if other != everyone[0]:
            raise ObservationError(
                f"rank {rank} saw {len(other)} relu sites, rank 0 saw {len(everyone[0])} "
                f"(first difference: {_first_difference(everyone[0], other)}); the forward pass depends on the data, "
                "so shards cannot be combined: scan in one process, or use --save-stats per shard and check the sites"
            )


def site_key(site: ObservedSite) -> tuple[str, int, int, str, int, int]:
    """What identifies a site across ranks and files: owner path, call, ordinal, op, units, unit axis."""
    return (site.module_path, site.call_index, site.ordinal, site.op, site.counters.units, site.unit_axis)


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


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not an integer; unset it or launch with torchrun") from None
