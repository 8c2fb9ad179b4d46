"""The watch under real DistributedDataParallel: 2 CPU processes on gloo (torch.multiprocessing spawn), each training
on its own batches; after every window each rank's counts equal a brute-force count over BOTH ranks' batches.

Oracle: the model writes every relu input of its training forwards to a trace (plain copies, no hooks); the parent
process concatenates both ranks' traces of each window and counts dead / dying / dormant units directly.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

EVERY, WINDOW, STEPS, WORLD = 2, 2, 9, 2
TAU, DYING_RATE = 0.025, 0.01


class RankSkewedMLP(nn.Module):
    """Two relu sites (an nn.ReLU and a functional relu). fc1's units 0-2 are dead on every rank's data; unit 3 fires
    only on rank 1's batches (feature 0 is shifted there), so rank 0 alone would call it dead and only the
    all-reduced count gets it right."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.head = nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.Linear(10, 3)
        self.trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.tracing = False
        with torch.no_grad():
            self.fc1.bias[:3] = -20.0
            self.fc1.weight[3] = 0.0
            self.fc1.weight[3, 0] = 1.0
            self.fc1.bias[3] = -5.0  # fires when x0 > 5: only rank 1 (x0 ~ N(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc1(x)
        b = self.fc2(self.act(a))
        if self.tracing:
            self.trace.append((a.detach().clone(), b.detach().clone()))
        return self.head(F.relu(b))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(8, 6, generator=g)
    if rank == 1:
        x[:, 0] += 8.0
    return x, torch.randint(0, 3, (8,), generator=g)


def _worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import relu_doctor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        net = RankSkewedMLP()
        model = DistributedDataParallel(net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with relu_doctor.watch(model, every=EVERY, window=WINDOW, optimizer=optimizer) as watch:
            for step in range(STEPS):
                x, y = _batch(rank, step)
                net.tracing = step % EVERY == 0
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        history = [
            (r.first_step, r.last_step, r.samples, {s.name: (s.dead, s.dying, s.dormant) for s in r.sites})
            for r in watch.history
        ]
        names = [site.name for site in watch.report().sites]
        (Path(folder) / f"rank{rank}.pkl").write_bytes(
            pickle.dumps({"history": history, "trace": net.trace, "names": names})
        )
    finally:
        dist.destroy_process_group()


def _counts(pre: torch.Tensor) -> tuple[int, int, int]:
    fired = (pre > 0).sum(dim=0)
    rate = fired / pre.shape[0]
    means = pre.clamp(min=0).double().mean(dim=0)
    dormant = means / means.mean() <= TAU
    return int((fired == 0).sum()), int(((rate > 0) & (rate < DYING_RATE)).sum()), int(dormant.sum())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_ranks_window_equals_the_brute_force_count_over_both_ranks_batches(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{rank}.pkl") for rank in range(WORLD)]
    port = _free_port()
    context = mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn")
    while not context.join(timeout=60):
        pass
    results = [pickle.loads(Path(out).read_bytes()) for out in outs]
    traces = [result["trace"] for result in results]
    # 9 steps, every 2nd observed (0, 2, 4, 6, 8), 2 per window: windows (0, 2), (4, 6) and the last, (8, 8)
    windows = [(0, 2), (4, 6), (8, 8)]
    names = results[0]["names"]
    assert names == ["module.act", "module:relu"]  # the DDP wrapper's child, its nn.ReLU and its functional relu
    for index, (first, last) in enumerate(windows):
        steps = range(index * WINDOW, min((index + 1) * WINDOW, len(traces[0])))
        expected = {
            name: _counts(torch.cat([traces[rank][k][site] for rank in range(WORLD) for k in steps]))
            for site, name in enumerate(names)
        }
        alone = _counts(torch.cat([traces[0][k][0] for k in steps]))  # rank 0's batches only
        for rank, result in enumerate(results):
            got_first, got_last, samples, counts = result["history"][index]
            assert (got_first, got_last) == (first, last), rank
            assert samples == 8 * WORLD * len(steps), rank  # both ranks' samples
            assert counts == expected, (rank, index)
        assert expected["module.act"][0] == 3 and alone[0] == 4  # rank 0 alone would call unit 3 dead
