"""Scale-out under ``torchrun``: each rank scans its shard of the probe, counters are combined with all_reduce.

Batches are dealt round-robin (batch ``i`` goes to rank ``i % WORLD_SIZE``), so every batch is the same batch a
single process would run and the combined counters equal a single-process scan: counts and sums are summed,
maxima maxed, over a gloo group (the counters are small and travel through the CPU whatever the device).
Before combining, the ranks agree on failure (one rank's error fails every rank, with that rank's message) and
check that every rank saw the same sites in the same order. Every rank then builds the same report, so every
rank exits with the same code; only rank 0 writes it (:func:`is_primary`).

The collectives are :mod:`relu_doctor.engine.distributed`'s. torch is imported inside the functions that need it:
:func:`rank_info` and :func:`is_primary` are safe on the CLI's fast paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..engine.distributed import agree_on_failure, combine_counters
from ..errors import UsageError

if TYPE_CHECKING:
    from ..engine.observe import ReluObserver

T = TypeVar("T")


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


class _SizedShard(Generic[T]):
    """:func:`shard` of a sized iterable, itself sized."""

    def __init__(self, batches: Iterable[T], info: RankInfo) -> None:
        self.batches, self.info = batches, info

    def __iter__(self) -> Iterator[T]:
        return shard(self.batches, self.info)

    def __len__(self) -> int:
        total = len(self.batches)  # type: ignore[arg-type]
        return len(range(self.info.rank, total, self.info.world_size))


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

    def __init__(self, info: RankInfo) -> None:
        self.info = info
        self._agreed = False

    def batches(self, batches: Iterable[T]) -> Iterable[T]:
        """This rank's shard of ``batches``, with its ``len`` when ``batches`` has one (the ``auto`` reducer
        sizes its choice on what this rank runs, not on the whole probe)."""
        if isinstance(batches, Sized):
            return _SizedShard(batches, self.info)
        return shard(batches, self.info)

    def combine(self, observer: ReluObserver, samples: int, meter: Any = None) -> int:
        """Collective: :func:`relu_doctor.engine.distributed.combine_counters` (this rank's counters become the
        job's); returns the total samples."""
        self._agreed = True
        return combine_counters(observer, samples, meter)

    @contextlib.contextmanager
    def failures_shared(self) -> Iterator[None]:
        """A failure on this rank before combining fails every rank with its message (no rank hangs)."""
        try:
            yield
        except Exception as error:
            if not self._agreed:
                self._agreed = True
                agree_on_failure(error)
            raise


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not an integer; unset it or launch with torchrun") from None
