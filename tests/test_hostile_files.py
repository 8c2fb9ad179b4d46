"""Hostile and broken inputs: nothing from the file runs, and every failure is one CheckpointError line."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from _loading_helpers import ARCH_MODULE_SPEC, reference_model, save_every_format, write_sharded
from safetensors.torch import save_file

from relu_doctor.errors import CheckpointError, UntrustedCodeError
from relu_doctor.loading import load_model


class RunsCommand:
    """A pickle payload whose __reduce__ runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _payload_files(directory: Path, marker: Path) -> dict[str, Path]:
    evil = RunsCommand(marker)
    state = reference_model().state_dict()
    paths = {
        "zip": directory / "evil.pt",
        "legacy": directory / "evil_legacy.pt",
        "protocol4": directory / "evil_p4.pt",
        "in-state-dict": directory / "sd.pt",
        "lightning": directory / "last.ckpt",
        "disguised": directory / "model.safetensors",
    }
    torch.save(evil, paths["zip"])
    torch.save(evil, paths["legacy"], _use_new_zipfile_serialization=False)
    torch.save({"w": torch.ones(2), "x": evil}, paths["protocol4"], pickle_protocol=4)
    torch.save({**state, "head.extra": evil}, paths["in-state-dict"])
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "hyper_parameters": evil,
            "pytorch-lightning_version": "2.4.0",
        },
        paths["lightning"],
    )
    torch.save(evil, paths["disguised"])
    return paths


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    directory = tmp_path_factory.mktemp("payloads")
    marker = directory / "PWNED"
    return _payload_files(directory, marker), marker


@pytest.mark.parametrize("name", ["zip", "legacy", "protocol4", "in-state-dict", "lightning", "disguised"])
@pytest.mark.parametrize("force_unsafe_env", [False, True])
@pytest.mark.parametrize("trust", [False, True])
def test_command_running_pickles_never_run(
    payloads: tuple[dict[str, Path], Path],
    name: str,
    force_unsafe_env: bool,
    trust: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths, marker = payloads
    if force_unsafe_env:
        # Flips torch.load's default to unsafe, but only where weights_only is not passed.
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError) as caught:
        load_model(paths[name], arch=ARCH_MODULE_SPEC, trust=trust)
    assert not marker.exists()
    message = str(caught.value)
    assert "refusing" in message and "system" in message and "\n" not in message
    assert not isinstance(caught.value, UntrustedCodeError)  # no "trust it?" prompt for a payload


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    # The control for the tests above: a plain pickle.loads does create the marker.
    import pickle

    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(RunsCommand(marker)))
    assert marker.exists()


def test_command_running_bin_in_a_model_directory_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "hf").mkdir()
    torch.save({"w": RunsCommand(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing"):
        load_model(tmp_path / "hf", arch=ARCH_MODULE_SPEC)
    assert not marker.exists()


@pytest.fixture(scope="module")
def code_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_every_format(tmp_path_factory.mktemp("code"), reference_model())


@pytest.mark.parametrize("name", ["pickled-module", "torchscript", "torch-export", "torch-export-legacy"])
def test_code_carrying_formats_are_refused_without_trust(code_files: dict[str, Path], name: str) -> None:
    with pytest.raises(UntrustedCodeError) as caught:
        load_model(code_files[name], arch=ARCH_MODULE_SPEC)
    assert caught.value.format_name == name
    message = str(caught.value)
    assert "--trust" in message and "runs code" in message and "\n" not in message


def _broken(tmp_path: Path, kind: str) -> Path:
    """One broken or non-checkpoint input per kind."""
    good = tmp_path / "good.pt"
    torch.save(reference_model().state_dict(), good)
    save_file(reference_model().state_dict(), tmp_path / "good.safetensors")
    rng = random.Random(kind)
    target = tmp_path / f"broken-{kind}"
    data = good.read_bytes()
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated-zip":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-safetensors":
        target.write_bytes((tmp_path / "good.safetensors").read_bytes()[:-40])
    elif kind == "random":
        target.write_bytes(rng.randbytes(4096))
    elif kind == "bit-flipped":
        flipped = bytearray(data)
        for index in rng.sample(range(len(flipped)), 64):
            flipped[index] ^= 0xFF
        target.write_bytes(bytes(flipped))
    elif kind == "absurd-header":
        target.write_bytes(struct.pack("<Q", 2**62) + b'{"a": {}}')
    elif kind == "offsets-past-end":
        header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
        target.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    elif kind == "not-json-header":
        target.write_bytes(struct.pack("<Q", 5) + b"{nope" + b"\0" * 8)
    elif kind == "plain-pickle":
        import pickle

        target.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    elif kind == "text":
        target.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    elif kind == "other-zip":
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "empty-dir":
        target.mkdir()
    elif kind == "dir-without-weights":
        target.mkdir()
        (target / "config.json").write_text("{}")
    elif kind == "missing":
        pass
    elif kind == "fifo":
        os.mkfifo(target)  # opening it for reading would block forever
    elif kind == "shard-escapes-directory":
        write_sharded(target, reference_model().state_dict(), "safetensors")
        index = target / "model.safetensors.index.json"
        index.write_text(index.read_text().replace("model-0000a", "../model-0000a"))
    elif kind == "shard-missing":
        write_sharded(target, reference_model().state_dict(), "bin")
        (target / "model-0000b.bin").unlink()
    elif kind == "not-a-state-dict":
        torch.save([1, 2, 3], target)
    return target


BROKEN = [
    "empty",
    "truncated-zip",
    "truncated-safetensors",
    "random",
    "bit-flipped",
    "absurd-header",
    "offsets-past-end",
    "not-json-header",
    "plain-pickle",
    "text",
    "other-zip",
    "empty-dir",
    "dir-without-weights",
    "missing",
    "fifo",
    "shard-escapes-directory",
    "shard-missing",
    "not-a-state-dict",
]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_inputs_give_one_checkpoint_error_line(tmp_path: Path, kind: str) -> None:
    target = _broken(tmp_path, kind)
    with pytest.raises(CheckpointError) as caught:
        load_model(target, arch=ARCH_MODULE_SPEC)
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and len(message) < 600


def test_absurd_safetensors_header_says_what_it_claims(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"header claims 4611686018427387904 bytes but the file has 17"):
        load_model(_broken(tmp_path, "absurd-header"), arch=ARCH_MODULE_SPEC)


def test_directory_without_weights_lists_what_it_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"without model weights \(found 'config.json'\)"):
        load_model(_broken(tmp_path, "dir-without-weights"), arch=ARCH_MODULE_SPEC)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    torch.save(reference_model().state_dict(), target)
    target.chmod(0)
    with pytest.raises(CheckpointError, match="cannot read it"):
        load_model(target, arch=ARCH_MODULE_SPEC)


def test_permission_denied_while_reading_is_a_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Works as root too: the OS refusal is simulated where the loader first opens the file.
    target = tmp_path / "w.pt"
    torch.save(reference_model().state_dict(), target)
    real_open = Path.open

    def denied(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(CheckpointError, match=r"cannot read it \(PermissionError: .*Permission denied"):
        load_model(target, arch=ARCH_MODULE_SPEC)


def test_a_copy_named_like_a_checkpoint_is_still_sniffed(tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("just text")
    shutil.copy(source, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint: it looks like text starting 'just text'"):
        load_model(tmp_path / "model.pt", arch=ARCH_MODULE_SPEC)
