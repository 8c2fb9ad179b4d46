"""The loading layer: every format to the same model, state-dict fitting, --arch, trust and sites."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _loading_helpers import (
    ARCH_FILE_SPEC,
    ARCH_MODULE_SPEC,
    MetaHostileNet,
    MixedReluNet,
    PositionBufferNet,
    probe,
    reference_model,
    save_every_format,
    sha256,
)
from torch.utils._python_dispatch import TorchDispatchMode

from relu_doctor.errors import ArchitectureError, CheckpointError, UntrustedCodeError, UsageError
from relu_doctor.loading import build_arch, load_model, sniff
from relu_doctor.loading.hashing import files_sha256

CODE_CARRYING = {"pickled-module", "torchscript", "torch-export", "torch-export-legacy"}
SNIFFED = {"lightning": "torch-save", "ddp": "torch-save"}
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_every_format(tmp_path_factory.mktemp("formats"), reference_model())


@pytest.mark.parametrize(
    "name",
    [
        "torch-save",
        "torch-save-legacy",
        "safetensors",
        "hf-safetensors",
        "hf-bin",
        "hf-safetensors-sharded",
        "hf-bin-sharded",
        "lightning",
        "ddp",
        "pickled-module",
        "torchscript",
        "torch-export",
        "torch-export-legacy",
    ],
)
def test_every_format_loads_to_a_model_with_the_original_outputs(saved: dict[str, Path], name: str) -> None:
    loaded = load_model(saved[name], arch=ARCH_MODULE_SPEC, trust=name in CODE_CARRYING)
    x = probe()
    torch.testing.assert_close(loaded.model(x), reference_model()(x))
    assert loaded.info.format == SNIFFED.get(name, name) == sniff(saved[name])
    assert loaded.info.path == str(saved[name])
    if saved[name].is_file():
        assert loaded.info.sha256 == sha256(saved[name])


def test_sniff_reads_content_not_extension(saved: dict[str, Path], tmp_path: Path) -> None:
    safetensors_as_pt = tmp_path / "weights.pt"
    state_dict_as_safetensors = tmp_path / "weights.safetensors"
    shutil.copy(saved["safetensors"], safetensors_as_pt)
    shutil.copy(saved["torch-save"], state_dict_as_safetensors)
    assert sniff(safetensors_as_pt) == "safetensors"
    assert sniff(state_dict_as_safetensors) == "torch-save"
    # torch.load would hand any path ending in .safetensors to safetensors; the content must win.
    loaded = load_model(state_dict_as_safetensors, arch=ARCH_MODULE_SPEC)
    torch.testing.assert_close(loaded.model(probe()), reference_model()(probe()))


def test_arch_as_file_path_with_kwargs(tmp_path: Path) -> None:
    torch.save(MixedReluNet(width=6).state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch=ARCH_FILE_SPEC, arch_kwargs={"width": 6})
    assert loaded.model.fc1.out_features == 6
    assert loaded.info.arch == ARCH_FILE_SPEC
    assert loaded.info.notes == ()  # the normal case says nothing


def test_state_dict_without_arch_explains_the_flag(saved: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"--arch path/to/model\.py:build_model") as caught:
        load_model(saved["safetensors"])
    assert "only weights" in str(caught.value)


def test_key_mismatch_lists_missing_and_unexpected_keys_and_the_arch(tmp_path: Path) -> None:
    state = reference_model().state_dict()
    state["extra.weight"] = state.pop("head.weight")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ArchitectureError) as caught:
        load_model(tmp_path / "w.pt", arch=ARCH_MODULE_SPEC)
    message = str(caught.value)
    assert "missing 1 keys ('head.weight')" in message
    assert "unexpected 1 keys ('extra.weight')" in message
    assert ARCH_MODULE_SPEC in message and "\n" not in message


def test_shape_mismatch_names_the_tensor(saved: dict[str, Path]) -> None:
    with pytest.raises(ArchitectureError, match=r"shape mismatch .*fc1\.weight \(8, 4\) vs \(16, 4\)"):
        load_model(saved["torch-save"], arch=ARCH_MODULE_SPEC, arch_kwargs={"width": 16})


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_dir/model.py:build_model", "no such file"),
        (f"{HERE / '_loading_helpers.py'}:missing_fn", "no attribute 'missing_fn'"),
        ("_loading_helpers:exploding", "raised ValueError: width must be even"),
        ("_loading_helpers:not_a_module", "returned an object of type str, not a torch.nn.Module"),
        ("_loading_helpers", "no ':callable' part"),
        ("no_such_package_xyz:build", "cannot import 'no_such_package_xyz'"),
        ("_loading_helpers:INPUT_FEATURES", "not callable"),
    ],
)
def test_bad_arch_is_one_line_naming_the_value(spec: str, fragment: str) -> None:
    with pytest.raises(ArchitectureError) as caught:
        build_arch(spec, None)
    message = str(caught.value)
    assert fragment in message and repr(spec) in message and "\n" not in message


def test_training_checkpoint_uses_the_model_entry(tmp_path: Path) -> None:
    model = reference_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(probe()).sum().backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7}, tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC)
    assert loaded.info.notes == ("used key 'model'",)
    torch.testing.assert_close(loaded.model(probe()), model.eval()(probe()))


def test_several_state_dicts_need_key_and_key_picks_one(tmp_path: Path) -> None:
    model, ema = reference_model(0), reference_model(1)
    torch.save({"model_state_dict": model.state_dict(), "ema": {"state_dict": ema.state_dict()}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"several state dicts \('ema\.state_dict', 'model_state_dict'\)"):
        load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC)
    loaded = load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC, key="ema.state_dict")
    torch.testing.assert_close(loaded.model(probe()), ema(probe()))
    with pytest.raises(CheckpointError, match=r"--key 'nope' .*candidates: 'ema\.state_dict'"):
        load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC, key="nope")


def test_compiled_inner_module_prefix_is_removed(tmp_path: Path) -> None:
    state = {k.replace("fc1.", "fc1._orig_mod."): v for k, v in reference_model().state_dict().items()}
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC)
    assert any("torch.compile" in note for note in loaded.info.notes)
    torch.testing.assert_close(loaded.model(probe()), reference_model()(probe()))


def test_unsafe_globals_are_listed_and_allow_global_admits_them(tmp_path: Path) -> None:
    checkpoint = {"state_dict": reference_model().state_dict(), "args": argparse.Namespace(lr=0.1)}
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(UntrustedCodeError, match=r"argparse\.Namespace.*--allow-global argparse\.Namespace"):
        load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC)
    loaded = load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC, allow_globals=["argparse.Namespace"])
    torch.testing.assert_close(loaded.model(probe()), reference_model()(probe()))
    assert load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC, trust=True).info.format == "torch-save"


def test_numpy_scalars_can_be_allowed_by_the_names_the_errors_list(tmp_path: Path) -> None:
    torch.save({"state_dict": reference_model().state_dict(), "best": np.float64(0.25)}, tmp_path / "c.pt")
    allowed: list[str] = []
    for _ in range(3):  # numpy's dtype class only shows up once the scalar itself is allowed
        try:
            loaded = load_model(tmp_path / "c.pt", arch=ARCH_MODULE_SPEC, allow_globals=allowed)
            break
        except UntrustedCodeError as error:
            allowed += str(error).split("(", 1)[1].split(")", 1)[0].split(", ")
    assert any(name.startswith("numpy.") for name in allowed)
    torch.testing.assert_close(loaded.model(probe()), reference_model()(probe()))


def test_bad_allow_global_is_a_checkpoint_error(saved: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"--allow-global 'nowhere\.Thing'"):
        load_model(saved["torch-save"], arch=ARCH_MODULE_SPEC, allow_globals=["nowhere.Thing"])


def test_state_dict_models_are_built_on_meta(saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    devices: list[str] = []
    import _loading_helpers

    def spy(width: int = 8) -> MixedReluNet:
        devices.append(torch.empty(()).device.type)  # the default device the callable runs under
        return MixedReluNet(width)

    monkeypatch.setattr(_loading_helpers, "build_model", spy)
    loaded = load_model(saved["torch-save"], arch=ARCH_MODULE_SPEC)
    assert devices == ["meta"]
    assert not any(t.is_meta for t in loaded.model.state_dict().values())


@pytest.mark.parametrize("net", [PositionBufferNet, MetaHostileNet])
def test_models_that_cannot_stay_on_meta_are_rebuilt_on_cpu(net: type[torch.nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(3)
    original = net().eval()
    torch.save(original.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch=f"_loading_helpers:{net.__name__}")
    torch.testing.assert_close(loaded.model(probe()), original(probe()))


def test_dtype_and_device_move_the_model(saved: dict[str, Path]) -> None:
    loaded = load_model(saved["safetensors"], arch=ARCH_MODULE_SPEC, dtype=torch.float64)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float64}
    torch.testing.assert_close(loaded.model(probe().double()).float(), reference_model()(probe()))
    assert not loaded.model.training
    with pytest.raises(UsageError, match="--device 'gpu0'"):
        load_model(saved["safetensors"], arch=ARCH_MODULE_SPEC, device="gpu0")


def test_directory_hash_covers_the_files_it_read(saved: dict[str, Path]) -> None:
    directory = saved["hf-safetensors-sharded"]
    loaded = load_model(directory, arch=ARCH_MODULE_SPEC)
    assert loaded.info.sha256 == files_sha256(directory, list(directory.iterdir()))


class _ReluCounter(TorchDispatchMode):
    """Counts relu-family aten ops as the observer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in ("relu", "relu_", "relu6", "hardtanh", "threshold"):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["torchscript", "torch-export", "torch-export-legacy"])
def test_opaque_models_name_each_relu_op_in_execution_order(saved: dict[str, Path], name: str) -> None:
    loaded = load_model(saved[name], trust=True)
    assert loaded.site_paths == ("act", "", "act6", "")  # nn.ReLU, torch.relu in forward, nn.ReLU6, F.threshold
    counter = _ReluCounter()
    with torch.inference_mode(), counter:
        loaded.model(probe())
    assert len(counter.ops) == len(loaded.site_paths)


def test_scripted_module_with_an_inplace_branch_names_its_sites(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(reference_model()), tmp_path / "s.pt")
    loaded = load_model(tmp_path / "s.pt", trust=True)
    # F.threshold compiles to an `if inplace:` holding the op; the inlined graph has resolved it
    assert loaded.site_paths == ("act", "", "act6", "")
    torch.testing.assert_close(loaded.model(probe()), reference_model()(probe()))


def test_eager_models_have_no_site_paths(saved: dict[str, Path]) -> None:
    assert load_model(saved["pickled-module"], trust=True).site_paths is None
    assert load_model(saved["torch-save"], arch=ARCH_MODULE_SPEC).site_paths is None


def test_pickled_module_classes_resolve_through_imports(tmp_path: Path) -> None:
    package = tmp_path / "zoo_pkg_for_loading"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\nclass Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(4, 2)\n"
        "    def forward(self, x):\n        return torch.relu(self.fc(x))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import zoo_pkg_for_loading

        torch.save(zoo_pkg_for_loading.Tiny(), tmp_path / "tiny.pt")
        del sys.modules["zoo_pkg_for_loading"]
        loaded = load_model(tmp_path / "tiny.pt", trust=True, imports=["zoo_pkg_for_loading"])
        assert type(loaded.model).__name__ == "Tiny"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("zoo_pkg_for_loading", None)


@pytest.fixture(scope="module")
def dead_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format of one model with 3 dead units at the first relu."""
    model = reference_model()
    with torch.no_grad():
        model.fc1.bias[:3] = -50.0
    return save_every_format(tmp_path_factory.mktemp("dead"), model)


@pytest.mark.parametrize(
    "name",
    [
        "torch-save",
        "torch-save-legacy",
        "safetensors",
        "hf-safetensors-sharded",
        "hf-bin-sharded",
        "lightning",
        "ddp",
        "pickled-module",
        "torchscript",
        "torch-export",
        "torch-export-legacy",
    ],
)
def test_scan_counts_match_across_formats(dead_formats: dict[str, Path], name: str) -> None:
    from relu_doctor import scan

    paths = dead_formats
    x = probe(2).repeat(8, 1) + torch.randn(40, 4, generator=torch.Generator().manual_seed(5))
    loaded = load_model(paths[name], arch=ARCH_MODULE_SPEC, trust=name in CODE_CARRYING)
    report = scan(loaded.model, [x[:20], x[20:]], site_paths=loaded.site_paths)
    # fc1 bias -50 on units 0..2 -> 3 dead after nn.ReLU and again after torch.relu; ReLU6 and threshold see
    # whatever the BatchNorm leaves, the same in every format.
    assert [(site.module_path, site.dead) for site in report.sites][:2] == [("act", 3), ("", 3)]
    eager = load_model(paths["torch-save"], arch=ARCH_MODULE_SPEC)
    expected = scan(eager.model, [x[:20], x[20:]])
    assert [(s.name, s.dead, s.units) for s in report.sites] == [(s.name, s.dead, s.units) for s in expected.sites]
