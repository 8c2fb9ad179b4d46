"""Lightning 2.x callback: watch relu units while ``Trainer.fit`` runs (``pip install 'relu-doctor[lightning]'``).

``Trainer(callbacks=[ReluDoctorCallback(every=10, window=10)])``. Each optimizer step whose ``global_step`` is a
multiple of ``every`` is observed: the training step's forward (``on_train_batch_start`` to ``on_before_backward``,
so whatever modules ``training_step`` calls) is counted in training mode. When a window of ``window`` observed steps
closes, the model's and every site's ``dead_fraction``, ``dying_fraction`` and ``dormant_fraction`` go to
``pl_module.log_dict`` (hence to every logger, at the Trainer's ``log_every_n_steps``, and to ``callback_metrics``);
a window over ``max_layer_dead_fraction`` / ``max_dead_fraction`` warns (:class:`DyingReluWarning`) or, with
``on_threshold="stop"``, also sets ``trainer.should_stop``. At the end of fit the last window's report is written
in ``report_format`` to ``report_path`` (``-``: standard output) and kept as :attr:`ReluDoctorCallback.report`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from ..report import Report, Thresholds
from ..watching import Watch
from ._common import DyingReluWarning, callback_settings, metrics_of, threshold_message, write_report

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package name
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment, unused-ignore]
    except ImportError as error:
        raise ImportError(
            "relu_doctor.integrations.lightning needs Lightning 2.x: pip install 'relu-doctor[lightning]'"
        ) from error

__all__ = ["DyingReluWarning", "ReluDoctorCallback"]


class ReluDoctorCallback(Callback):
    """Counts dead, dying and dormant relu units during ``fit`` and logs them; see the module docstring."""

    def __init__(
        self,
        *,
        every: int = 10,
        window: int = 10,
        max_layer_dead_fraction: float | None = 0.5,
        max_dead_fraction: float | None = None,
        on_threshold: str = "warn",
        per_site: bool = True,
        report_format: str | None = None,
        report_path: str | None = None,
        recycle_every: int | None = None,
        recycle: str = "dormant",
        seed: int = 0,
        thresholds: Thresholds | None = None,
    ) -> None:
        super().__init__()
        self.settings = callback_settings(
            every=every,
            window=window,
            max_layer_dead_fraction=max_layer_dead_fraction,
            max_dead_fraction=max_dead_fraction,
            on_threshold=on_threshold,
            per_site=per_site,
            report_format=report_format,
            report_path=report_path,
            recycle_every=recycle_every,
            recycle=recycle,
            seed=seed,
            thresholds=thresholds,
        )
        self.watch: Watch | None = None
        """The watch of the current fit (None before ``fit`` starts)."""
        self.report: Report | None = None
        """The last window's report, once ``fit`` has ended."""
        self.rendered: str | None = None
        """The end-of-fit report as written (None when no report_format was given)."""
        self._scope: contextlib.ExitStack | None = None
        self._handled = 0

    # -- fit lifecycle ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.watch = Watch(
            pl_module,
            attach="manual",
            optimizer=list(trainer.optimizers),
            count_optimizer_steps=False,
            start_step=trainer.global_step,
            **self.settings.watch_settings(),
        )
        self.watch.start()
        self._handled = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.watch is None:
            return
        self._catch_up(trainer)
        if self.watch.observes_this_step and self._scope is None:
            self._scope = contextlib.ExitStack()
            self._scope.enter_context(self.watch.observing(batch))

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._close_scope()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.watch is None:
            return
        self._close_scope()
        self._catch_up(trainer)
        closed = self._handle_new_windows(trainer)
        latest = self.watch.history[-1] if self.watch.history else None
        if latest is not None and (closed or _logger_due(trainer)):
            metrics = metrics_of(latest, self.watch.recycles, self.settings.per_site)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, logger=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is None:
            return
        self._close_scope()
        self.watch.close()
        if self._handle_new_windows(trainer):  # the last, partial window: logging through log_dict is over
            metrics = metrics_of(self.watch.history[-1], self.watch.recycles, self.settings.per_site)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if self.watch.history:
            self.report = self.watch.report()
            if trainer.is_global_zero:
                self.rendered = write_report(self.report, self.settings)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close_scope()
        if self.watch is not None:
            self.watch.close()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _catch_up(self, trainer: Any) -> None:
        """End the watch's steps up to the Trainer's ``global_step`` (optimizer steps; gradient accumulation safe)."""
        assert self.watch is not None
        while self.watch.current_step < trainer.global_step:
            self.watch.step()

    def _close_scope(self) -> None:
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.close()

    def _handle_new_windows(self, trainer: Any) -> bool:
        """Warn (or stop) for every window closed since the last call; True when there was one."""
        assert self.watch is not None
        history = self.watch.history
        fresh, self._handled = history[self._handled :], len(history)
        for record in fresh:
            message = threshold_message(record)
            if message is None:
                continue
            if self.settings.on_threshold == "stop":
                trainer.should_stop = True
                message += "; stopping training (on_threshold='stop')"
            if trainer.is_global_zero:
                warnings.warn(message, DyingReluWarning, stacklevel=2)
        return bool(fresh)


def _logger_due(trainer: Any) -> bool:
    """True on the steps the Trainer hands logged values to its loggers (``log_every_n_steps``), so the latest
    window's values reach them however windows and logging steps line up."""
    connector = getattr(trainer, "_logger_connector", None)
    due = getattr(connector, "should_update_logs", None)
    return True if due is None else bool(due)
