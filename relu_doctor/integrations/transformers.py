"""Hugging Face ``Trainer`` callback: watch relu units while ``trainer.train()`` runs (``pip install 'relu-doctor[hf]'``).

``Trainer(..., callbacks=[ReluDoctorCallback(every=10, window=10)])`` (or ``ReluDoctorCallback(CallbackSettings(...))``). Each optimizer step whose ``global_step`` is
a multiple of ``every`` is observed: the model's training forward passes (every micro-batch of it) are counted in
training mode; evaluation passes (eval mode) are not. The latest closed window's ``relu_doctor/...`` fractions are
added to every log the Trainer makes (``logging_steps``), so they land in ``trainer.state.log_history``
(``trainer_state.json``) and reach the callbacks after this one; reporting integrations (TensorBoard, W&B) added
by ``report_to`` run before user callbacks, so to have them see the values put this callback first:
``trainer.callback_handler.callbacks.insert(0, callback)``. Thresholds warn (:class:`DyingReluWarning`) or, with
``on_threshold="stop"``, set ``control.should_training_stop``; the end-of-training report is written in
``report_format`` to ``report_path`` (``-``: standard output) and kept as :attr:`ReluDoctorCallback.report`.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..report import Report
from ..watching import Watch
from .settings import CallbackSettings, DyingReluWarning, alerts, metrics_of, settings_from, write_report

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "relu_doctor.integrations.transformers needs transformers: pip install 'relu-doctor[hf]'"
    ) from error

__all__ = ["CallbackSettings", "DyingReluWarning", "ReluDoctorCallback"]


class ReluDoctorCallback(TrainerCallback):
    """Counts dead, dying and dormant relu units during ``train()`` and logs them; see the module docstring and
    :class:`~relu_doctor.integrations.settings.CallbackSettings` for the options."""

    def __init__(self, settings: CallbackSettings | None = None, /, **options: Any) -> None:
        self.settings = settings_from(settings, options)
        """The checked settings."""
        self.watch: Watch | None = None
        """The watch of the current training run (None before it starts)."""
        self.report: Report | None = None
        """The last window's report, once training has ended."""
        self.rendered: str | None = None
        """The end-of-training report as written (None when no report_format was given)."""
        self._handled = 0

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        optimizers = [optimizer] if optimizer is not None else []
        self.watch = Watch(
            model,
            optimizer=optimizers,
            count_optimizer_steps=False,
            start_step=state.global_step,
            **self.settings.watch_options(),
        )
        self.watch.start()
        self._handled = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is None:
            return
        while self.watch.current_step < state.global_step:
            self.watch.step()
        if self._handle_new_windows(state) and self.settings.on_threshold == "stop":
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.watch is None or not self.watch.history or logs is None:
            return
        metrics = metrics_of(self.watch.history[-1], self.watch.recycles, self.settings.per_site)
        logs.update(metrics)
        # The Trainer appended its copy of these logs to log_history before calling back: add the values there too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is None:
            return
        self.watch.close()
        if self._handled < len(self.watch.history):  # the last, partial window: the Trainer logs no more
            self._handle_new_windows(state)
            metrics = metrics_of(self.watch.history[-1], self.watch.recycles, self.settings.per_site)
            state.log_history.append({**metrics, "step": state.global_step})
        if self.watch.history:
            self.report = self.watch.report()
            if state.is_world_process_zero:
                self.rendered = write_report(self.report, self.settings)

    def _handle_new_windows(self, state: Any) -> bool:
        """Warn for every window closed since the last call; True when one broke a threshold."""
        assert self.watch is not None
        history = self.watch.history
        fresh, self._handled = history[self._handled :], len(history)
        messages = alerts(fresh, self.settings)
        for message in messages if state.is_world_process_zero else ():
            warnings.warn(message, DyingReluWarning, stacklevel=2)
        return bool(messages)
