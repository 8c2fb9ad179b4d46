"""The Lightning and Hugging Face callbacks, run for real on CPU; metrics read back from the loggers' files."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

DEAD = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)  # 10 of 16 hidden units: 62.5% > the default max_layer_dead_fraction 0.5


def _planted_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias[list(DEAD)] = -100.0
        model[0].bias[10:] = 1.0
    return model


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


# -- Lightning ---------------------------------------------------------------------------------------------------
def _lightning_fit(tmp_path: Path, callback, max_steps: int = 8, log_every: int = 1):  # type: ignore[no-untyped-def]
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _planted_mlp()  # training_step calls a child, not self(x): the callback still sees it

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=log_every,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(), loader)
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text(encoding="utf-8").splitlines()))
    return trainer, rows, [str(w.message) for w in caught if "relu-doctor" in str(w.message)]


def test_lightning_callback_logs_every_window_to_the_csv_logger_and_warns(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from relu_doctor.integrations.lightning import ReluDoctorCallback

    report_path = tmp_path / "report.json"
    callback = ReluDoctorCallback(every=2, window=2, report_format="json", report_path=str(report_path))
    trainer, rows, messages = _lightning_fit(tmp_path, callback, log_every=5)
    logged = [r for r in rows if r.get("relu_doctor/dead_fraction")]
    # 8 steps, every 2nd observed (0, 2, 4, 6), windows of 2 -> 2 windows, each 10 of 16 dead
    assert [(h.first_step, h.last_step, h.samples) for h in callback.watch.history] == [(0, 2, 16), (4, 6, 16)]
    # each window logged once, at the global_step after its last step, though neither 3 nor 7 is a multiple of
    # log_every_n_steps=5 (the Trainer's own flushes)
    assert [int(r["step"]) for r in logged] == [3, 7]
    assert all(float(r["relu_doctor/dead_fraction"]) == 10 / 16 for r in logged)
    assert float(trainer.callback_metrics["relu_doctor/dead_fraction"]) == 10 / 16  # what EarlyStopping can monitor
    assert all(float(r["relu_doctor/net.1/dead_fraction"]) == 10 / 16 for r in logged)
    assert {"relu_doctor/dying_fraction", "relu_doctor/dormant_fraction", "relu_doctor/net.1/dormant_fraction"} <= set(
        rows[0]
    )
    assert len(messages) == 2 and "site net.1: 10 of 16 units dead (62.5%) > max-layer-dead-fraction 0.5" in messages[0]
    assert trainer.global_step == 8  # warn only: training went on
    saved = json.loads(report_path.read_text())
    assert saved["summary"]["dead"] == 10 and callback.report is not None


def test_lightning_callback_can_stop_training(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from relu_doctor.integrations.lightning import ReluDoctorCallback

    callback = ReluDoctorCallback(every=1, window=2, on_threshold="stop")
    trainer, _, messages = _lightning_fit(tmp_path, callback, max_steps=20)
    assert trainer.global_step == 2  # the first window (steps 0 and 1) broke the limit
    assert "stopping training" in messages[0]


def test_lightning_callback_stays_quiet_when_all_is_well(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from relu_doctor.integrations.lightning import ReluDoctorCallback

    callback = ReluDoctorCallback(every=2, window=2, max_layer_dead_fraction=0.9)
    _, _, messages = _lightning_fit(tmp_path, callback)
    assert messages == []


# -- Hugging Face ------------------------------------------------------------------------------------------------
def test_transformers_callback_adds_the_metrics_to_the_trainers_log_history(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from relu_doctor.integrations.transformers import ReluDoctorCallback

    class TinyConfig(transformers.PretrainedConfig):
        model_type = "tiny-relu-mlp"

    class TinyReluModel(transformers.PreTrainedModel):
        """A relu MLP as a PreTrainedModel, built from its config: no download."""

        config_class = TinyConfig

        def __init__(self, config: TinyConfig) -> None:
            super().__init__(config)
            self.mlp = _planted_mlp()

        def forward(self, x=None, labels=None):  # type: ignore[no-untyped-def]
            logits = self.mlp(x)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    class Pairs(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = _data()

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=8,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = ReluDoctorCallback(every=1, window=2)
    trainer = transformers.Trainer(
        model=TinyReluModel(TinyConfig()), args=args, train_dataset=Pairs(), callbacks=[callback]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    trainer.save_state()
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "relu_doctor/dead_fraction" in h]
    # windows close at steps 1, 3, 5 (every step observed, 2 per window); the Trainer logs at steps 2, 4, 6
    assert [h["step"] for h in logged if "loss" in h] == [2, 4, 6]
    assert all(
        h["relu_doctor/dead_fraction"] == 10 / 16 and h["relu_doctor/mlp.1/dead_fraction"] == 10 / 16 for h in logged
    )
    assert [(w.first_step, w.last_step, w.samples) for w in callback.watch.history] == [
        (0, 1, 16),
        (2, 3, 16),
        (4, 5, 16),
    ]
    assert sum("relu-doctor" in str(w.message) for w in caught) == 3


# -- shared settings -------------------------------------------------------------------------------------------
def test_one_settings_object_serves_both_callbacks_and_checks_every_value() -> None:
    from relu_doctor.errors import UsageError
    from relu_doctor.integrations.settings import CallbackSettings, settings_from

    settings = CallbackSettings(every=5, window=4, max_dead_fraction=0.25, report_path="-")
    assert settings_from(None, {"every": 5, "window": 4, "max_dead_fraction": 0.25, "report_path": "-"}) == settings
    assert settings_from(settings, {}) is settings
    assert settings.limits.max_dead_fraction == 0.25 and settings.limits.max_layer_dead_fraction == 0.5
    assert settings.output is not None and settings.output[0] == "table"  # a path alone: the table
    assert settings.watch_options()["thresholds"] == settings.limits
    for bad, message in (
        ({"every": 0}, "every= must be an integer >= 1"),
        ({"on_threshold": "panic"}, "on_threshold must be one of warn, stop"),
        ({"max_layer_dead_fraction": 1.5}, "max_layer_dead_fraction must be a fraction"),
        ({"report_format": "pdf"}, "report_format must be one of"),
        ({"recycle": "all"}, "recycle= must be one of dormant, dead"),
        ({"evry": 3}, "unknown callback option 'evry'"),
    ):
        with pytest.raises(UsageError, match=message):
            settings_from(None, bad)
    with pytest.raises(UsageError, match="not both"):
        settings_from(settings, {"every": 3})


def test_both_callbacks_take_the_settings_object_or_its_fields(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    from relu_doctor.integrations import lightning, transformers
    from relu_doctor.integrations.settings import CallbackSettings

    settings = CallbackSettings(every=3, window=2, on_threshold="stop")
    for module in (lightning, transformers):
        assert module.ReluDoctorCallback(settings).settings is settings
        assert module.ReluDoctorCallback(every=3, window=2, on_threshold="stop").settings == settings
