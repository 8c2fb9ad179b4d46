"""The training watch: count relu units on the model's own training forward passes, one window at a time.

Steps. Training step ``s`` (from ``start_step``, 0 by default) is *observed* when ``s % every == 0``; during an
observed step every training-mode forward pass of the model is counted (gradient accumulation: all its micro-batches).
A step ends when the optimizer given to the watch steps (a post-step hook), or when the caller calls
:meth:`Watch.step` (pass no optimizer then). After ``window`` observed steps the window closes: its counters become
a :class:`~relu_doctor.report.Report` (the scan's, so renderers and the gate work unchanged), a
:class:`~relu_doctor.watching.records.WindowRecord` in :attr:`Watch.history`, and the counters restart from zero.

What is counted. The forward passes the training loop runs anyway, in training mode: dropout masks and BatchNorm
batch statistics are those of training (where gradients die), so a count can differ from an eval-mode scan; every
report says so. The model is never switched to eval, its buffers are not restored (BatchNorm running statistics
update as they would without the watch), autograd records nothing of the counting and no activation is kept. On
steps that are not observed no hook is installed, so they cost nothing.

Under ``torch.distributed`` every rank observes its own batches and the counters are all-reduced when a window
closes (:func:`relu_doctor.engine.distributed.combine_counters`), so every rank holds the same, global report; every rank must
build its watch at the same point and step alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..analysis.build import build_report
from ..engine.counters import UnitAccumulator
from ..engine.distributed import combine_counters
from ..engine.observe import ReluObserver
from ..errors import UsageError
from ..report import ModelInfo, ProbeInfo, Report, Thresholds
from .records import RecycleEvent, WindowRecord, window_record
from .recycling import RECYCLE_CHOICES, recycle_live

ATTACH_CHOICES = ("forward", "manual")
RUN_PASSES = 1_000
"""How many observed passes ``reducer="auto"`` expects of a training run (it cannot know): after the first pass it
loads the fused (numba) reducer when that many passes of its size pay for loading it, as a scan does with its
probe; a tiny test model never does, the benchmark CNN and MLP do."""
"""How passes are found: hooks on the model's own forward, or :meth:`Watch.observing` spans (the Lightning callback)."""


class Watch:
    """Watches a model's relu units while it trains; build it with :func:`relu_doctor.watch`.

    ``with relu_doctor.watch(model, every=10, window=10, optimizer=opt) as watch:`` train as usual; then
    ``watch.report()`` (the latest window, as a scan's Report) and ``watch.history`` (one record per window).
    Hooks are installed only for observed steps and removed on exit; the model's weights change only when
    ``recycle_every`` asks for it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 10,
        window: int = 10,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        thresholds: Thresholds | None = None,
        recycle_every: int | None = None,
        recycle: str = "dormant",
        seed: int = 0,
        unit_dim: int | None = None,
        reducer: str = "auto",
        start_step: int = 0,
        attach: str = "forward",
        count_optimizer_steps: bool = True,
    ) -> None:
        check_watch_settings(every, window, recycle_every, recycle, start_step, attach)
        self.model = model
        self.every, self.window = every, window
        self.thresholds = thresholds or Thresholds()
        self.recycle_every, self.recycle, self.seed, self.unit_dim = recycle_every, recycle, seed, unit_dim
        self.attach = attach
        self.optimizers: tuple[torch.optim.Optimizer, ...] = _as_tuple(optimizer)
        """Optimizers whose per-weight state a recycle resets (the first one also counts steps, unless told not to)."""
        self._count_optimizer_steps = count_optimizer_steps and bool(self.optimizers)
        self._observer = ReluObserver(model, unit_dim=unit_dim, reducer=reducer, expected_passes=RUN_PASSES)
        self._step = start_step
        self._started = self._closed = False
        self._optimizer_hook: Any = None
        self._forward_hooks: list[Any] = []
        self._open: tuple[Any, Any] | None = None
        self._depth = 0
        self._step_samples = 0
        self._window = _WindowState()
        self._history: list[WindowRecord] = []
        self._events: list[RecycleEvent] = []
        self._report: Report | None = None
        self._last_recycle_end = start_step
        self._group: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Watch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Watch:
        """Begin watching (``with`` does this): hooks for the first step, a step hook on the optimizer."""
        if self._started:
            return self
        self._started = True
        self._group = _counter_group()
        if self._count_optimizer_steps:
            self._optimizer_hook = self.optimizers[0].register_step_post_hook(lambda *_: self.step())
        self._arm()
        return self

    def close(self) -> None:
        """Stop watching: the current window is closed (when it observed anything) and every hook is removed."""
        if self._closed or not self._started:
            return
        self._closed = True
        try:
            self._end_step()
            if self._window.steps:
                self._finish_window()
        finally:
            self._disarm()
            if self._optimizer_hook is not None:
                self._optimizer_hook.remove()

    # -- steps -----------------------------------------------------------------------------------------------
    @property
    def current_step(self) -> int:
        """The training step now running (the number of steps ended so far, plus ``start_step``)."""
        return self._step

    @property
    def observes_this_step(self) -> bool:
        """True when the current step's training forward passes are counted."""
        return self._started and not self._closed and self._step % self.every == 0

    def step(self) -> None:
        """End the current training step; call it after ``optimizer.step()`` when no optimizer was given."""
        if not self._started or self._closed:
            raise UsageError("watch.step() needs a started watch: use `with relu_doctor.watch(model) as watch:`")
        if self._open is not None:
            raise UsageError("watch.step() was called inside the model's forward pass; call it after optimizer.step()")
        self._end_step()
        self._step += 1
        self._arm()

    def _end_step(self) -> None:
        if not self._step_samples:
            return
        self._window.add_step(self._step, self._step_samples)
        self._step_samples = 0
        if self._window.steps >= self.window:
            self._finish_window()

    # -- passes ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def observing(self, inputs: Any) -> Iterator[None]:
        """Count the forward pass run inside the block as one pass of the current step (``attach="manual"``);
        nothing is counted when this step is not observed. ``inputs`` give the batch size (first tensor)."""
        if not self.observes_this_step or self._open is not None:
            yield
            return
        self._begin(inputs)
        try:
            yield
        finally:
            self._end(None)

    def _arm(self) -> None:
        wanted = self.attach == "forward" and self.observes_this_step
        if wanted and not self._forward_hooks:
            self._forward_hooks = [
                self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
                self.model.register_forward_hook(self._after_forward, always_call=True),
            ]
        elif not wanted:
            self._disarm()

    def _disarm(self) -> None:
        for handle in self._forward_hooks:
            handle.remove()
        self._forward_hooks = []

    def _before_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._depth += 1
        if self._depth == 1 and module.training:  # eval-mode forwards (validation mid-step) are not training
            self._begin((args, kwargs))

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._open is not None:
            self._end(output)

    def _begin(self, inputs: Any) -> None:
        scope = self._observer.observed_pass(inputs)
        record = scope.__enter__()
        self._open = (scope, record)
        self._step_samples += _batch_size(inputs)

    def _end(self, output: Any) -> None:
        assert self._open is not None
        scope, record = self._open
        self._open = None
        record(output)
        scope.__exit__(None, None, None)

    # -- windows ---------------------------------------------------------------------------------------------
    @property
    def history(self) -> tuple[WindowRecord, ...]:
        """One record per closed window, oldest first: per-site dead, dying and dormant counts."""
        return tuple(self._history)

    @property
    def recycles(self) -> tuple[RecycleEvent, ...]:
        """Every in-training recycle that changed or skipped units, oldest first."""
        return tuple(self._events)

    def report(self) -> Report:
        """The latest closed window as a scan Report; before any window closed, the steps observed so far."""
        if self._report is not None:
            return self._report
        if not self._window.steps and not self._step_samples:
            raise UsageError(
                f"the watch has observed no training step yet (step {self._step}, every {self.every}); "
                "run a training forward pass and call watch.step() (or pass optimizer=) first"
            )
        window = self._window.with_step(self._step, self._step_samples) if self._step_samples else self._window
        return self._build_report(window, window.samples)

    def _finish_window(self) -> None:
        window = self._window
        devices = [site.counters.positive.device for site in self._observer.sites]
        samples = window.samples
        if self._group is not None:
            samples = combine_counters(self._observer, samples, group=self._group.group)
        report = self._build_report(window, samples)
        self._history.append(window_record(len(self._history), window.first, window.last, window.steps, report))
        self._report = report
        for site, device in zip(self._observer.sites, devices):
            site.counters = UnitAccumulator(site.counters.units, device)
        self._window = _WindowState()
        if self.recycle_every is not None and self._step + 1 - self._last_recycle_end >= self.recycle_every:
            self._recycle(report)

    def _build_report(self, window: _WindowState, samples: int) -> Report:
        probe = ProbeInfo("training", samples, window.batch_size)
        report = build_report(
            self._observer.sites,
            self._observer,
            self.model,
            self.thresholds,
            probe,
            ModelInfo("", "in-memory", None),
            self.unit_dim,
        )
        note = (
            f"counted on the training forward passes of steps {window.first}..{window.last} "
            f"({window.steps} observed steps, every {self.every}): in training mode, so dropout and BatchNorm "
            "batch statistics act as in training and counts can differ from an eval-mode scan"
        )
        return replace(report, warnings=(note, *report.warnings))

    def _recycle(self, report: Report) -> None:
        self._last_recycle_end = self._step + 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self._events))
        done = recycle_live(
            self.model,
            self._observer.sites,
            report.sites,
            units=self.recycle,
            generator=generator,
            optimizers=self.optimizers,
        )
        if done.recycled or done.skipped:
            self._events.append(
                RecycleEvent(
                    self._step, len(self._history) - 1, done.recycled, done.skipped, done.optimizer_values_reset
                )
            )


class _WindowState:
    """The observed steps of the window being filled."""

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0
        self.batch_size = 0
        self.first = -1
        self.last = -1

    def add_step(self, step: int, samples: int) -> None:
        if not self.steps:
            self.first, self.batch_size = step, samples
        self.steps += 1
        self.samples += samples
        self.last = step

    def with_step(self, step: int, samples: int) -> _WindowState:
        copy = _WindowState()
        copy.steps, copy.samples, copy.batch_size, copy.first, copy.last = (
            self.steps,
            self.samples,
            self.batch_size,
            self.first,
            self.last,
        )
        copy.add_step(step, samples)
        return copy


class _CounterGroup:
    """This rank's place and the process group the counters are all-reduced over."""

    def __init__(self, rank: int, size: int, group: Any) -> None:
        self.rank, self.size, self.group = rank, size, group


def _counter_group() -> _CounterGroup | None:
    """None outside torch.distributed (or with one process); else a gloo group for the counters (they are small
    and reduced on the CPU, whatever backend the training uses). Collective: every rank builds its watch alike."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() <= 1:
        return None
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _CounterGroup(dist.get_rank(), dist.get_world_size(), group)


def _batch_size(inputs: Any) -> int:
    first = next((a for a in tree_flatten(inputs)[0] if isinstance(a, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1


def _as_tuple(optimizer: Any) -> tuple[torch.optim.Optimizer, ...]:
    if optimizer is None:
        return ()
    if isinstance(optimizer, (list, tuple)):
        return tuple(optimizer)
    return (optimizer,)


def check_watch_settings(
    every: int, window: int, recycle_every: int | None, recycle: str, start_step: int = 0, attach: str = "forward"
) -> None:
    """Every setting checked before any hook is installed, naming the bad value."""
    for name, value in (("every", every), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"watch {name}= must be an integer >= 1, got {value!r}")
    if recycle_every is not None and (
        isinstance(recycle_every, bool) or not isinstance(recycle_every, int) or recycle_every < 1
    ):
        raise UsageError(f"watch recycle_every= must be an integer >= 1 or None (off), got {recycle_every!r}")
    if recycle not in RECYCLE_CHOICES:
        raise UsageError(f"watch recycle= must be one of {', '.join(RECYCLE_CHOICES)}, got {recycle!r}")
    if not isinstance(start_step, int) or start_step < 0:
        raise UsageError(f"watch start_step= must be an integer >= 0, got {start_step!r}")
    if attach not in ATTACH_CHOICES:
        raise UsageError(f"watch attach= must be one of {', '.join(ATTACH_CHOICES)}, got {attach!r}")


def watch(model: nn.Module, **settings: Any) -> Watch:
    """A :class:`Watch` on ``model``; use it as a context manager. See :class:`Watch` for the settings."""
    return Watch(model, **settings)
