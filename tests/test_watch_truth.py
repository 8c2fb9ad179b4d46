"""Truth under a too-high learning rate: the watch's verdicts during a dying run agree with trend's scans of
checkpoints saved at the same steps.

The run (``bench/watch_study.py``, also the README figure): a relu MLP without BatchNorm or dropout (so a training-mode
forward and trend's eval-mode scan compute the same function), full-batch SGD at lr 1.0, so every step's forward
runs on the same 256 samples and trend's probe is exactly those samples. The watch observes every 4th step with
windows of one step; checkpoint ``s`` is saved before step ``s``'s forward, i.e. with the weights window ``s``
counted with. Agreement, precisely: at every observed step, every site's dead unit indices in the watch's window
report equal those in trend's report of that checkpoint; hence the first step with more than half a layer dead is
the same step (not merely within one ``every``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parent.parent / "bench" / "watch_study.py"


def _study():  # type: ignore[no-untyped-def]
    # Loaded by path under its own name: putting bench/ on sys.path would shadow tests/models.py with bench/models.py.
    name = "relu_doctor_bench_watch_study"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, STUDY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_step_the_watch_sees_a_layer_die_is_the_step_trend_sees_it_in_the_checkpoints(tmp_path: Path) -> None:
    study = _study()
    run = study.truth_run(tmp_path, steps=40, every=4)
    assert run.steps == (0, 4, 8, 12, 16, 20, 24, 28, 32, 36)
    assert len(run.watch_reports) == len(run.trend.reports) == 10
    for site in ("1", "3"):
        watch, trend = run.dead_units(site)
        assert watch == trend, site  # unit for unit, at every observed step
    # the second hidden layer dies: 0 of 64 dead at step 0, more than 32 of 64 from step 28 on (measured: 35)
    assert run.first_over_half("3") == (28, 28)
    assert run.first_over_half("1") == (None, None)  # the first layer stays alive
    dead = [len(units) for units in run.dead_units("3")[0]]
    assert dead[0] == 0 and dead[-1] > 32
    # trend's own bookkeeping reads the same: its per-checkpoint dead counts of site 3
    assert list(next(s for s in run.trend.sites if s.name == "3").dead) == dead
    # the watch's reports say what they counted: training forwards, not a probe
    assert all(report.probe.source == "training" for report in run.watch_reports)
