"""Lightning 2.x callback: watch relu units while ``Trainer.fit`` runs (``pip install 'relu-doctor[lightning]'``).

``Trainer(callbacks=[ReluDoctorCallback(every=10, window=10)])`` (or ``ReluDoctorCallback(CallbackSettings(...))``). Each optimizer step whose ``global_step`` is a
multiple of ``every`` is observed: the training step's forward (``on_train_batch_start`` to ``on_before_backward``,
so whatever modules ``training_step`` calls) is counted in training mode. When a window of ``window`` observed steps
closes, the model's and every site's ``dead_fraction``, ``dying_fraction`` and ``dormant_fraction`` go to every
logger of the Trainer (``Logger.log_metrics`` at that ``global_step``, so each window is logged once, whatever
``log_every_n_steps`` is) and to ``callback_metrics`` (``pl_module.log_dict(..., logger=False)``, so
``EarlyStopping`` or ``ModelCheckpoint`` can monitor them); a window over ``max_layer_dead_fraction`` / ``max_dead_fraction`` warns (:class:`DyingReluWarning`) or, with
``on_threshold="stop"``, also sets ``trainer.should_stop``. At the end of fit the last window's report is written
in ``report_format`` to ``report_path`` (``-``: standard output) and kept as :attr:`ReluDoctorCallback.report`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from ..report import Report
from ..watching import Watch
from .settings import CallbackSettings, DyingReluWarning, alerts, metrics_of, settings_from, write_report

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package name
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment, unused-ignore]
    except ImportError as error:
        raise ImportError(
            "relu_doctor.integrations.lightning needs Lightning 2.x: pip install 'relu-doctor[lightning]'"
        ) from error

__all__ = ["CallbackSettings", "DyingReluWarning", "ReluDoctorCallback"]


class ReluDoctorCallback(Callback):
    """Counts dead, dying and dormant relu units during ``fit`` and logs them; see the module docstring and
    :class:`~relu_doctor.integrations.settings.CallbackSettings` for the options."""

    def __init__(self, settings: CallbackSettings | None = None, /, **options: Any) -> None:
        super().__init__()
        self.settings = settings_from(settings, options)
        """The checked settings."""
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
            **self.settings.watch_options(),
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
        if self._handle_new_windows(trainer):
            metrics = metrics_of(self.watch.history[-1], self.watch.recycles, self.settings.per_site)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, logger=False)
            _to_loggers(trainer, metrics)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is None:
            return
        self._close_scope()
        self.watch.close()
        if self._handle_new_windows(trainer):  # the last, partial window: log_dict is closed by now
            _to_loggers(trainer, metrics_of(self.watch.history[-1], self.watch.recycles, self.settings.per_site))
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
        messages = alerts(fresh, self.settings)
        if messages and self.settings.on_threshold == "stop":
            trainer.should_stop = True
        for message in messages if trainer.is_global_zero else ():
            warnings.warn(message, DyingReluWarning, stacklevel=2)
        return bool(fresh)


def _to_loggers(trainer: Any, metrics: dict[str, float]) -> None:
    """Hand a window's values to every logger at the current ``global_step`` (Lightning's loggers write on rank 0
    only); through ``log_dict`` they would reach the loggers only on ``log_every_n_steps`` steps."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
