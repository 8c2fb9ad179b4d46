"""Regenerate relu-doctor's sample checkpoints and probe, deterministically.

Run from anywhere:  python samples/make_samples.py

Writes, next to this file:
  dying_mlp.safetensors     digits MLP whose ReLUs died from a too-high learning rate (Adam, lr=3e-2)
  healthy_mlp.safetensors   same architecture, same everything except lr (Adam, lr=1e-3)
  digits_probe.npy          float32 (512, 64) held-out digits, standardised like the training inputs
  digits_probe_labels.npy   int64 (512,) labels of the probe
  README.md                 how the files were made and what they contain (numbers filled in by this script)

The architecture lives in digits_mlp.py (build_mlp) and is imported from there.
Dead counts are computed by an independent brute force: the saved .safetensors file is re-read with
safetensors.numpy and every Linear is applied by hand in numpy, layer by layer; a hidden unit is dead when its
pre-activation (the Linear output before the ReLU) is <= 0 for every probe sample. The result is cross-checked
against the torch model with forward hooks on its nn.ReLU modules.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent

SEED = 0
N_PROBE = 512  # held-out test images; the probe is the whole test split
EPOCHS = 10
BATCH_SIZE = 32
LR_DYING = 3e-2
LR_HEALTHY = 1e-3
HIDDEN = ("fc1", "fc2")  # Linear layers followed by a ReLU
LINEARS = ("fc1", "fc2", "fc3")
MAX_BYTES = 200 * 1024


def _setup_determinism() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    np.random.seed(SEED)


def _load_arch():
    spec = importlib.util.spec_from_file_location("digits_mlp", HERE / "digits_mlp.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_mlp


def load_data():
    """Digits 8x8, pixel/16, stratified split, standardised with the training mean/std."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_PROBE, random_state=SEED, stratify=y)
    mu = x_tr.mean(axis=0)
    sd = x_tr.std(axis=0)
    sd[sd < 1e-6] = 1.0  # constant-zero border pixels: leave them at 0 after centring
    x_tr = ((x_tr - mu) / sd).astype(np.float32)
    x_te = ((x_te - mu) / sd).astype(np.float32)
    return np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te


def train(build_mlp, x_tr: np.ndarray, y_tr: np.ndarray, lr: float) -> torch.nn.Module:
    torch.manual_seed(SEED)  # same init for both models
    model = build_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(SEED)  # same batch order for both models
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(perm), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def brute_force(path: Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Re-read the checkpoint and run it by hand in numpy (float32, like torch).

    Returns per hidden layer the pre-activation matrix (N, units), and the logits.
    """
    sd = load_numpy(str(path))
    pre: dict[str, np.ndarray] = {}
    h = x.astype(np.float32)
    for name in LINEARS:
        z = h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
        if name in HIDDEN:
            pre[name] = z
            h = np.maximum(z, 0.0)
        else:
            return pre, z
    raise AssertionError("unreachable")


def torch_relu_inputs(model: torch.nn.Module, x: np.ndarray) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach().clone()))
        for m in model.modules()
        if isinstance(m, torch.nn.ReLU)
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hk in hooks:
        hk.remove()
    return seen


def analyse(label: str, path: Path, model, x_te, y_te, x_tr, y_tr) -> dict:
    pre, logits = brute_force(path, x_te)
    acc = float((logits.argmax(axis=1) == y_te).mean())
    pre_tr, logits_tr = brute_force(path, x_tr)
    train_acc = float((logits_tr.argmax(axis=1) == y_tr).mean())
    # Cross-check with torch: ReLU inputs seen by hooks on the model as trained.
    relu_in = torch_relu_inputs(model, x_te)
    pre64 = pre_f64(path, x_te)
    assert len(relu_in) == len(HIDDEN)
    out = {"label": label, "acc": acc, "train_acc": train_acc, "n_train": len(x_tr), "layers": {}}
    for (name, z), t in zip(pre.items(), relu_in, strict=True):
        dead = (z <= 0).all(axis=0)
        dead_t = (t <= 0).all(dim=0).numpy()
        assert (dead == dead_t).all(), f"{label}/{name}: numpy and torch disagree on dead units"
        z64 = pre64[name]
        assert ((z64 <= 0).all(axis=0) == dead).all(), f"{label}/{name}: float64 recompute disagrees"
        rate = (z > 0).mean(axis=0)
        alive_rate = rate[~dead]
        dead_tr = (pre_tr[name] <= 0).all(axis=0)
        maxpre = z.max(axis=0)
        out["layers"][name] = {
            "units": z.shape[1],
            "dead": int(dead.sum()),
            "dead_idx": np.flatnonzero(dead).tolist(),
            "dead_train": int(dead_tr.sum()),
            "dead_probe_alive_train": int((dead & ~dead_tr).sum()),
            "rate_min": float(rate.min()),
            "rate_median": float(np.median(rate)),
            "alive_rate_min": float(alive_rate.min()) if alive_rate.size else float("nan"),
            "alive_rate_median": float(np.median(alive_rate)) if alive_rate.size else float("nan"),
            # closest-to-threshold unit: how far the decision "dead / alive" is from 0
            "min_abs_maxpre": float(np.abs(maxpre).min()),
            "dead_maxpre_max": float(maxpre[dead].max()) if dead.any() else float("nan"),
            "alive_maxpre_min": float(maxpre[~dead].min()) if (~dead).any() else float("nan"),
        }
    return out


def pre_f64(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sd = {k: v.astype(np.float64) for k, v in load_numpy(str(path)).items()}
    h = x.astype(np.float64)
    pre = {}
    for name in HIDDEN:
        z = h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
        pre[name] = z
        h = np.maximum(z, 0.0)
    return pre


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def print_report(r: dict) -> None:
    total = sum(v["dead"] for v in r["layers"].values())
    units = sum(v["units"] for v in r["layers"].values())
    print(
        f"[{r['label']}] test acc {r['acc']:.4f} (train {r['train_acc']:.4f}); "
        f"dead on probe {total}/{units} ({total / units:.1%})"
    )
    for name, v in r["layers"].items():
        print(
            f"  {name}: dead {v['dead']}/{v['units']} ({v['dead'] / v['units']:.1%}) "
            f"[dead on train set too: {v['dead_train']}]; firing rate min {v['rate_min']:.4f} "
            f"median {v['rate_median']:.4f}; among alive: min {v['alive_rate_min']:.4f} "
            f"median {v['alive_rate_median']:.4f}"
        )
        print(
            f"    max pre-act over probe: dead units <= {v['dead_maxpre_max']:.4g}, "
            f"alive units >= {v['alive_maxpre_min']:.4g}"
        )
        if v["dead"]:
            print(f"    dead units: {v['dead_idx']}")


def _fmt(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.4g}"


def write_readme(reports: list[dict], files: list[Path]) -> None:
    def layer_rows() -> str:
        rows = []
        for r in reports:
            for name, v in r["layers"].items():
                rows.append(
                    f"| {r['label']} | {name} | {v['dead']}/{v['units']} ({v['dead'] / v['units']:.1%}) "
                    f"| {v['dead_train']} | {v['rate_min']:.3f} | {v['rate_median']:.3f} "
                    f"| {v['alive_rate_min']:.3f} | {v['alive_rate_median']:.3f} "
                    f"| {_fmt(v['dead_maxpre_max'])} | {_fmt(v['alive_maxpre_min'])} |"
                )
        return "\n".join(rows)

    def model_rows() -> str:
        rows = []
        for r in reports:
            total = sum(v["dead"] for v in r["layers"].values())
            units = sum(v["units"] for v in r["layers"].values())
            per = ", ".join(f"{n} {v['dead']}" for n, v in r["layers"].items())
            rows.append(
                f"| {r['label']} | {r['lr']:g} | {r['acc']:.4f} | {r['train_acc']:.4f} "
                f"| {total}/{units} ({total / units:.1%}) | {per} |"
            )
        return "\n".join(rows)

    def dead_lists() -> str:
        lines = []
        for r in reports:
            for name, v in r["layers"].items():
                lines.append(f"- `{r['label']}` `{name}`: {v['dead_idx']}")
        return "\n".join(lines)

    n_train = reports[0]["n_train"]
    pyver = sys.version.split()[0]
    layer_header = (
        "| model | layer | dead on probe | dead on train | rate min | rate median | alive: rate min "
        "| alive: rate median | dead: max pre-act <= | alive: max pre-act >= |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    hashes = "\n".join(f"| `{p.name}` | {p.stat().st_size} | `{sha256(p)}` |" for p in files)
    text = f"""# samples

Small, committed fixtures for relu-doctor: a ReLU MLP for scikit-learn's bundled 8x8 digits, trained twice
from the same initialisation and batch order, differing **only in the learning rate**. The high-LR run kills
a large share of its hidden units by itself (real dying, nothing planted).

Everything here is written by `python samples/make_samples.py` (except `digits_mlp.py`, which it imports).
Do not edit the numbers below by hand; re-run the script.

## Files

- `digits_mlp.py`: the architecture. `build_mlp()` returns `fc1` Linear(64,128), `act1` ReLU,
  `fc2` Linear(128,128), `act2` ReLU, `fc3` Linear(128,10). Imports only torch.
  CLI: `--arch samples/digits_mlp.py:build_mlp`.
- `dying_mlp.safetensors`: `state_dict()` of the model trained with Adam lr={LR_DYING:g}.
- `healthy_mlp.safetensors`: `state_dict()` of the model trained with Adam lr={LR_HEALTHY:g}.
- `digits_probe.npy`: float32 `({N_PROBE}, 64)`, the held-out test split, standardised like the
  training inputs.
- `digits_probe_labels.npy`: int64 `({N_PROBE},)`, labels of the probe rows.
- `make_samples.py`: the generator.

## How they were made

- Data: `sklearn.datasets.load_digits()` (1797 images, bundled, no download). Inputs `pixel / 16`,
  then `train_test_split(test_size={N_PROBE}, random_state={SEED}, stratify=y)`:
  {n_train} train / {N_PROBE} test. Standardised per pixel with the **training** mean and std
  (std < 1e-6, i.e. always-blank pixels, set to 1). The probe is the whole test split, so
  "test acc" below is accuracy on the probe.
- Training: `torch.manual_seed({SEED})` right before `build_mlp()` (both models start from identical
  weights); Adam (default betas/eps, no weight decay), cross-entropy, batch size {BATCH_SIZE},
  {EPOCHS} epochs, shuffling from a `torch.Generator` seeded with {SEED} (identical batch order for
  both models).
  - dying: lr = {LR_DYING:g}
  - healthy: lr = {LR_HEALTHY:g}
- Determinism: `torch.set_num_threads(1)`, `torch.use_deterministic_algorithms(True)`, fixed
  seeds. Saved with `safetensors.torch.save_file(model.state_dict(), path)` (no metadata).

## Results on the probe

Dead = hidden unit whose pre-activation (Linear output before the ReLU) is `<= 0` for every one of
the {N_PROBE} probe samples. Counted by an independent brute force in `make_samples.py`: the saved
`.safetensors` is re-read with `safetensors.numpy` and each Linear is applied by hand in numpy,
layer by layer; the result is asserted equal to (a) the ReLU inputs captured by forward hooks on
the torch model and (b) a float64 recompute.

| model | lr | test acc | train acc | dead (all hidden) | dead per layer |
|---|---|---|---|---|---|
{model_rows()}

Per hidden layer. Firing rate of a unit = share of probe samples with pre-activation > 0.
"dead on train" = dead over all {n_train} training inputs as well. The last two columns are each
unit's largest pre-activation over the probe: the highest among dead units and the lowest among
alive ones, i.e. how far the dead/alive call is from the threshold 0.

{layer_header}
{layer_rows()}

Dead unit indices (output feature index of the Linear):

{dead_lists()}

## Reproducibility

Re-running `python samples/make_samples.py` rewrites every file byte-identically on the same
platform (checked by running it twice and comparing sha256). Float results can differ across
CPUs / torch builds, so the hashes below may not match on another machine; the dead counts should
stay close. Made with torch {torch.__version__}, numpy {np.__version__}, Python {pyver}.

| file | bytes | sha256 |
|---|---|---|
{hashes}
"""
    (HERE / "README.md").write_text(text)


def main() -> None:
    _setup_determinism()
    build_mlp = _load_arch()
    x_tr, y_tr, x_te, y_te = load_data()

    probe_path = HERE / "digits_probe.npy"
    labels_path = HERE / "digits_probe_labels.npy"
    np.save(probe_path, x_te.astype(np.float32))
    np.save(labels_path, y_te.astype(np.int64))

    reports = []
    paths = []
    for label, lr in (("dying", LR_DYING), ("healthy", LR_HEALTHY)):
        model = train(build_mlp, x_tr, y_tr, lr)
        path = HERE / f"{label}_mlp.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        os.chmod(path, 0o644)  # safetensors creates 0600 files
        paths.append(path)
        r = analyse(label, path, model, x_te, y_te, x_tr, y_tr)
        r["lr"] = lr
        print_report(r)
        reports.append(r)

    files = [HERE / "digits_mlp.py", *paths, probe_path, labels_path]
    for p in files:
        size = p.stat().st_size
        assert size < MAX_BYTES, f"{p.name} is {size} bytes (limit {MAX_BYTES})"
    write_readme(reports, files)
    for p in [*files, HERE / "README.md"]:
        print(f"{sha256(p)}  {p.stat().st_size:>7}  {p.name}")


if __name__ == "__main__":
    main()
