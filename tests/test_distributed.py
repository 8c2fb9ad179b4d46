"""torchrun scale-out: 2 CPU ranks on gloo give exactly the single-process scan; failures fail every rank alike."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models import ConvBNReluShifted

from relu_doctor import scan
from relu_doctor.errors import UsageError
from relu_doctor.workflow.distributed import RankInfo, check_enough_batches, is_primary, rank_info, shard

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLES = ROOT / "samples"

WORKER = """
import pickle, sys
import torch
sys.path.insert(0, {tests!r})
from models import ConvBNReluShifted
from relu_doctor import scan
from relu_doctor.workflow.distributed import ShardedScan, process_group, rank_info, torchrun_scan


class DataDependent(torch.nn.Module):
    # One more relu call on rank 1's batches: the ranks see different sites.
    def forward(self, x):
        x = torch.relu(x)
        return torch.relu(x) if x.sum() > 1e6 else x


class FailsOnBigInput(torch.nn.Module):
    def forward(self, x):
        if x.abs().max() > 1e6:
            raise ValueError("input too large on this batch")
        return torch.relu(x)


def attempt(model, batches):
    info = rank_info()
    try:
        with torchrun_scan(info) as sharded:
            return scan(model, batches, combiner=sharded, reducer="torch")
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"


info = rank_info()
torch.manual_seed(0)
model = ConvBNReluShifted()
batches = list(torch.randn(40, 3, 5, 5, generator=torch.Generator().manual_seed(1)).split(6))  # 7 batches, last 4
small, big = torch.ones(2, 3), torch.full((2, 3), 1e7)
with process_group(info):
    results = {{
        "report": attempt(model, batches),
        "mismatch": attempt(DataDependent(), [small, big]),
        "failure": attempt(FailsOnBigInput(), [small, big]),
    }}
with open(sys.argv[1], "wb") as handle:
    pickle.dump(results, handle)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(command_for_rank: list[list[str]], tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start the ranks; start them again on a new port if another process took the free port in between."""
    for _attempt in range(3):
        done = _launch_once(command_for_rank, tmp_path)
        if not any("address already in use" in p.stderr.lower() for p in done):
            break
    return done


def _launch_once(command_for_rank: list[list[str]], tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per rank with torchrun's environment (gloo over localhost), wait for all."""
    port, world = _free_port(), len(command_for_rank)
    processes = []
    for rank, command in enumerate(command_for_rank):
        env = {
            **os.environ,
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    tmp_path = tmp_path_factory.mktemp("ranks")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=str(TESTS)))
    outputs = [tmp_path / f"rank{r}.pkl" for r in range(2)]
    done = _launch([[sys.executable, str(worker), str(out)] for out in outputs], tmp_path)
    assert all(p.returncode == 0 for p in done), [p.stderr[-2000:] for p in done]
    return [pickle.loads(out.read_bytes()) for out in outputs]


def test_two_ranks_equal_one_process_exactly(two_rank_results: list[dict[str, object]]) -> None:
    torch.manual_seed(0)
    model = ConvBNReluShifted()
    batches = list(torch.randn(40, 3, 5, 5, generator=torch.Generator().manual_seed(1)).split(6))
    # The same reducer on both sides: "auto" picks the fused kernels when an earlier test loaded them in this
    # process, and their float sums differ from the torch reducer's in the last bits.
    single = scan(model, batches, reducer="torch")
    for result in two_rank_results:
        report = result["report"]
        assert report.sites == single.sites  # every counter, sums included, and every classification
        assert report.summary == single.summary and report.gate == single.gate
        assert report.probe.samples == 40  # rank 0: 4 batches (22 samples), rank 1: 3 batches (18)
    assert single.sites[0].dead_units == ConvBNReluShifted.DEAD


def test_ranks_that_saw_different_sites_fail_alike(two_rank_results: list[dict[str, object]]) -> None:
    messages = [r["mismatch"] for r in two_rank_results]
    assert messages[0] == messages[1]
    assert "ObservationError: rank 1 saw 2 relu sites, rank 0 saw 1" in str(messages[0])


def test_a_failure_on_one_rank_fails_every_rank_with_its_message(two_rank_results: list[dict[str, object]]) -> None:
    messages = [r["failure"] for r in two_rank_results]
    assert messages[0] == messages[1]
    assert "rank 1 of 2 failed" in str(messages[0]) and "input too large on this batch" in str(messages[0])


def test_cli_under_two_ranks_writes_once_and_exits_alike(tmp_path: Path) -> None:
    np.save(tmp_path / "probe.npy", np.load(SAMPLES / "digits_probe.npy")[:256])
    args = [
        "-m",
        "relu_doctor",
        "scan",
        str(SAMPLES / "dying_mlp.safetensors"),
        "--arch",
        f"{SAMPLES / 'digits_mlp.py'}:build_mlp",
        "--probe",
        "probe.npy",
        "--batch-size",
        "64",
        "--no-simulate",
        "-f",
        "json",
        "--max-dead-fraction",
        "0",
        "--save-stats",
        "run.stats",
    ]
    ranks = _launch([[sys.executable, *args]] * 2, tmp_path)
    single = subprocess.run([sys.executable, *args[:-2]], cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert [r.returncode for r in ranks] == [single.returncode] * 2 == [1, 1]  # the dying sample exceeds 0
    assert ranks[1].stdout == ""  # only rank 0 writes the report
    ours, theirs = json.loads(ranks[0].stdout), json.loads(single.stdout)
    assert ours["sites"] == theirs["sites"] and ours["summary"] == theirs["summary"]
    from relu_doctor.workflow.stats_io import load_stats

    assert load_stats(tmp_path / "run.stats").probe.samples == 256  # rank 0 saved the combined counters


def test_rank_info_reads_torchrun_environment() -> None:
    assert rank_info({}) is None and rank_info({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert rank_info({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == RankInfo(2, 4, 0)
    assert is_primary({"WORLD_SIZE": "2", "RANK": "0"}) and not is_primary({"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(UsageError, match="WORLD_SIZE='two' is not an integer"):
        rank_info({"WORLD_SIZE": "two"})
    with pytest.raises(UsageError, match="RANK=3 is outside 0..1"):
        rank_info({"WORLD_SIZE": "2", "RANK": "3"})


def test_shards_deal_batches_round_robin() -> None:
    # 7 batches over 3 ranks -> rank 0: 0, 3, 6; rank 1: 1, 4; rank 2: 2, 5
    assert [list(shard(range(7), RankInfo(r, 3))) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(UsageError, match="the probe has 2 batch\\(es\\) for 3 ranks"):
        check_enough_batches(2, RankInfo(0, 3))
    check_enough_batches(3, RankInfo(0, 3))


def test_a_rank_shard_of_a_sized_probe_has_the_rank_length() -> None:
    # `auto` sizes the reducer choice on len(): a rank runs ceil((7 - rank) / 3) of 7 batches -> 3, 2, 2
    from relu_doctor.workflow.distributed import ShardedScan

    shards = [ShardedScan(RankInfo(r, 3)).batches(list(range(7))) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]  # type: ignore[arg-type]
    assert [list(s) for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]
