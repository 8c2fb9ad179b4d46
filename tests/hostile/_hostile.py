"""Builders of hostile inputs (made in the test, never committed as blobs) and the checks every refusal must pass.

A refusal is: exit 2, exactly one line on stderr naming the problem, within a time bound, nothing created or
changed next to the inputs. Inputs that crashed the process before the guards existed run in a subprocess, so a
regression fails one test instead of killing the suite.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from typer.testing import CliRunner

from relu_doctor.cli import app

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
ARCH = "_loading_helpers:build_model"


@dataclass(frozen=True)
class Outcome:
    """What one CLI run did."""

    code: int
    """Exit status (negative: killed by that signal)."""
    stdout: str
    """Everything on stdout."""
    stderr: str
    """Everything on stderr."""
    seconds: float
    """Wall time."""


def run_inprocess(*args: str) -> Outcome:
    """The CLI in this process (fast; for inputs that cannot crash the interpreter)."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, list(args))
    return Outcome(result.exit_code, result.stdout, result.stderr, time.perf_counter() - started)


def run_subprocess(*args: str, timeout: float = 60) -> Outcome:
    """The CLI in a child process: a SIGSEGV there is a failed test, not a dead suite."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "COLUMNS": "100"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "relu_doctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


_CHILD = """
import json, sys, time
from typer.testing import CliRunner
from relu_doctor.cli import app
for name, args in json.loads(sys.stdin.read()):
    print(json.dumps({"start": name}), flush=True)
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    print(json.dumps({"name": name, "code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                      "seconds": time.perf_counter() - started}), flush=True)
"""


def run_isolated(cases: dict[str, list[str]], timeout: float = 120) -> dict[str, Outcome]:
    """Every case's CLI run in a child process, one interpreter start for all: a case that kills the child comes
    back with the signal as its (negative) code, and a fresh child runs the cases after it."""
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "COLUMNS": "100"}
    outcomes: dict[str, Outcome] = {}
    while pending := [(name, args) for name, args in cases.items() if name not in outcomes]:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(pending),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        started: str | None = None
        for line in done.stdout.splitlines():
            record = json.loads(line)
            started = record.get("start")
            if started is None:
                outcomes[record["name"]] = Outcome(
                    record["code"], record["stdout"], record["stderr"], record["seconds"]
                )
        if started is None and len(outcomes) < len(cases):  # died before its first case: report, do not loop
            started = pending[0][0]
        if started is not None:
            outcomes[started] = Outcome(done.returncode, "", f"child died: {done.stderr[-1000:]}", 0.0)
    return outcomes


def assert_refused(outcome: Outcome, *words: str, seconds: float = 20) -> str:
    """Exit 2 with exactly one stderr line containing every word, within `seconds`; returns the line."""
    lines = outcome.stderr.splitlines()
    assert outcome.code == 2, f"exit {outcome.code}, stderr: {outcome.stderr[-2000:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines: {outcome.stderr[-2000:]}"
    assert lines[0].startswith("relu-doctor: error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert outcome.seconds < seconds, f"took {outcome.seconds:.1f} s"
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory` (hidden and temporary files included)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def torch_zip(path: Path, pickle_bytes: bytes, *, compress: bool = True) -> Path:
    """A torch.save-style zip archive whose data.pkl is `pickle_bytes` (deflated: the file stays tiny)."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return path


PROTO2 = b"\x80\x02"


def deep_tuple_key(depth: int) -> bytes:
    """{((((),),),...): None} with the key nested `depth` deep: hashing it overflows the C stack."""
    return PROTO2 + b"}" + b")" + b"\x85" * depth + b"N" + b"s" + b"."


def hash_bomb(levels: int) -> bytes:
    """{t_levels: None} where t_(k+1) = (t_k, t_k) through the memo: hashing it takes 2**levels steps."""
    body = bytearray(PROTO2 + b"}" + b")" + b"r" + struct.pack("<I", 0))
    for level in range(levels):
        get = b"j" + struct.pack("<I", level)
        body += get + get + b"\x86" + b"r" + struct.pack("<I", level + 1)
    return bytes(body + b"N" + b"s" + b".")


def opcode_flood(pairs: int) -> bytes:
    """None, pop, None, pop, ... `pairs` times, then a small dict: a tiny deflated file with millions of opcodes."""
    return PROTO2 + b"N0" * pairs + b"}."


def sparse_weight(layout: str) -> torch.Tensor:
    """An 8x4 sparse tensor (fc1.weight's shape) whose indices point far outside it, built without checks."""
    values = torch.ones(4)
    if layout == "coo":
        indices = torch.tensor([[0, 1, 7, 5], [0, 1_000_000, 3, 2]])
        return torch.sparse_coo_tensor(indices, values, (8, 4), check_invariants=False)
    compressed = torch.tensor([0, 1, 2, 3, 4, 4, 4, 4, 4])
    plain = torch.tensor([0, 1_000_000, 3, 2])
    if layout == "csr":
        return torch.sparse_csr_tensor(compressed, plain, values, (8, 4), check_invariants=False)
    if layout == "csc":
        return torch.sparse_csc_tensor(
            compressed[:5], torch.tensor([0, 1_000_000, 7, 2]), values, (8, 4), check_invariants=False
        )
    blocks = torch.ones(2, 2, 2)
    return torch.sparse_bsr_tensor(
        torch.tensor([0, 1, 2, 2, 2]), torch.tensor([0, 500_000]), blocks, (8, 4), check_invariants=False
    )
