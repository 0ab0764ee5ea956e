"""DDP with gloo on CPU (lowbit.train.distributed): two processes match one process with the same
global batch within ATOL, a SIGTERM on one rank stops both at the same step and ``resume``
continues exactly, WaveQ (two fits sharing parameters, β frozen mid-run) runs under DDP, and
``lowbit train`` under ``torch.distributed.run`` writes its run folder from rank 0 only.

Tolerance: the two runs differ only in float summation order (each rank sums half the batch,
DDP averages the two gradients), so weights agree to ~1e-7 after a few steps; ATOL = 1e-5
leaves room and is far below any real mismatch (a wrong shard or step size moves weights by >1e-3).
WaveQ gets WAVEQ_ATOL = 1e-3: its sinusoid at 8 bits has curvature ~(pi / spacing)^2, which makes
the phase stiff and grows the summation-order noise (measured 1.1e-4 on the learned layer, under
a tenth of that layer's 8-bit level spacing; the learned plan is the same). Rounding in the
forward pass is discontinuous: once float noise flips one weight's or activation's level the
runs drift apart (LeNet-5 LSQ w4a4 on digits: 1e-7 for two steps, 1e-4 from step 3, 1e-2 after
an epoch). The small LSQ w3a3 net here has no flip in its 8 steps on this CPU (3.7e-8); the
CLI comparison trains a float LeNet-5.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.data import ArrayLoader, load_dataset
from lowbit.errors import ConfigError, TrainingInterrupted
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.reg.waveq import WaveQConfig
from lowbit.reg.waveq_method import waveq_quantize
from lowbit.train import QUIET, LossTerm, MetricsWriter, TrainConfig, fit, load_checkpoint, read_metrics
from lowbit.train import distributed as D

ATOL = 1e-5
WAVEQ_ATOL = 1e-3
SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = TrainConfig(epochs=2, lr=0.05)
INTERRUPT_AT = 6  # global step (1-based): epoch 2, step 2 of 4


def splits():
    return load_dataset("synthetic", seed=0, num_classes=4, in_channels=1, input_size=8, n_train=128, n_test=64)


def global_loader(data, batch_size: int = 32) -> ArrayLoader:
    return ArrayLoader(data.train, batch_size=batch_size, shuffle=True, seed=3, mean=data.mean, std=data.std,
                       augment="crop_flip")


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def lsq_net() -> nn.Module:
    """LSQ activations initialise their step from the first batch: the data-dependent state."""
    model = small_net()
    quantize_(model, Plan.uniform(3, 3), "lsq")
    return model


def l2_term() -> LossTerm:
    return LossTerm("l2", lambda m: sum((p ** 2).sum() for p in m.parameters()), weight=1e-4)


def run_waveq(loader) -> dict:
    outcome = waveq_quantize(small_net(), loader, waveq=WaveQConfig(quantizer="lsq"), train=CONFIG,
                             quantizer=None, finetune=TrainConfig(epochs=1, lr=0.01), act_bits=4)
    return {"state": outcome.model.state_dict(), "bits": outcome.bits, "beta": outcome.beta}


def max_diff(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---- the two-process worker (torch.multiprocessing.spawn) ---------------------------------------
def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init_distributed("cpu")
    folder, data = Path(out), splits()
    try:
        def loader():
            return D.ShardedLoader(global_loader(data), info.rank, info.world_size)

        model = lsq_net()
        result = fit(model, loader(), CONFIG, loss_terms=[l2_term()], checkpoint_path=folder / "full.ckpt",
                     metrics=MetricsWriter(folder / "full.jsonl"))
        report = {"full": {"state": model.state_dict(), "history": result.history}}

        def sigterm_on_rank0(m: nn.Module, progress: float, count=[0]) -> None:  # noqa: B006
            count[0] += 1
            if count[0] == INTERRUPT_AT and info.rank == 0:
                os.kill(os.getpid(), signal.SIGTERM)

        try:
            fit(lsq_net(), loader(), CONFIG, loss_terms=[l2_term()], step_callbacks=[sigterm_on_rank0],
                checkpoint_path=folder / "int.ckpt")
            report["interrupted"] = None
        except TrainingInterrupted as exc:
            report["interrupted"] = str(exc)
        resumed = lsq_net()
        fit(resumed, loader(), CONFIG, loss_terms=[l2_term()], checkpoint_path=folder / "int.ckpt", resume=True)
        report["resumed"] = resumed.state_dict()
        report["waveq"] = run_waveq(loader())
        from lowbit.runs.waveq_run import WaveQOptions, run_waveq as waveq_command

        report["waveq_run"] = waveq_command(WaveQOptions(epochs=1, finetune_epochs=1, batch_size=256, threads=1,
                                                         out=str(folder / "waveq-run")), reporter=QUIET)
        torch.save(report, folder / f"rank{info.rank}.pt")
    finally:
        D.cleanup(info)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(folder)), nprocs=2, join=True)
    return folder


@pytest.mark.slow
def test_two_processes_match_one_process(two_process):
    single = lsq_net()
    history = fit(single, global_loader(splits()), CONFIG, loss_terms=[l2_term()]).history
    ranks = [torch.load(two_process / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert max_diff(ranks[0]["full"]["state"], ranks[1]["full"]["state"]) == 0  # ranks stay identical
    diff = max_diff(single.state_dict(), ranks[0]["full"]["state"])
    print(f"max |w_single - w_ddp| = {diff:.3g}")
    assert diff < ATOL
    for one, two in zip(history, ranks[0]["full"]["history"], strict=True):  # metrics reduced over ranks
        assert two["train_acc"] == one["train_acc"]
        for key in ("train_loss", "train_task_loss", "l2"):
            assert two[key] == pytest.approx(one[key], rel=1e-5)
    # rank 0 alone writes metrics and checkpoints
    assert [m["epoch"] for m in read_metrics(two_process / "full.jsonl")] == [0, 1]
    assert max_diff(load_checkpoint(two_process / "full.ckpt")["model"], ranks[0]["full"]["state"]) == 0


@pytest.mark.slow
def test_signal_on_one_rank_stops_both_and_resume_is_exact(two_process):
    ranks = [torch.load(two_process / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in ranks:  # rank 1 got no signal but stopped at the same step
        assert r["interrupted"] is not None and "epoch 2, step 2/4" in r["interrupted"]
    assert max_diff(ranks[0]["resumed"], ranks[0]["full"]["state"]) < 1e-7
    assert max_diff(ranks[1]["resumed"], ranks[0]["resumed"]) == 0


@pytest.mark.slow
def test_waveq_under_ddp_matches_one_process(two_process):
    single = run_waveq(global_loader(splits()))
    ranks = [torch.load(two_process / f"rank{r}.pt", weights_only=False)["waveq"] for r in (0, 1)]
    assert ranks[0]["bits"] == ranks[1]["bits"] == single["bits"]
    assert max_diff(ranks[0]["state"], ranks[1]["state"]) == 0
    diff = max_diff(ranks[0]["state"], single["state"])
    print(f"WaveQ: max |w_single - w_ddp| = {diff:.3g}")
    assert diff < WAVEQ_ATOL


@pytest.mark.slow
def test_waveq_command_under_ddp_writes_from_rank0_only(two_process):
    """``run_waveq`` (what ``lowbit waveq`` calls) inside the two-process group: one folder, one
    metrics line per epoch of each phase, the same result on both ranks."""
    out = two_process / "waveq-run"
    results = [torch.load(two_process / f"rank{r}.pt", weights_only=False)["waveq_run"] for r in (0, 1)]
    written = json.loads((out / "result.json").read_text())
    assert written["world_size"] == 2 and written["accuracy"] == results[0]["accuracy"] == results[1]["accuracy"]
    assert [(m["phase"], m["epoch"]) for m in read_metrics(out / "metrics.jsonl")] == [("waveq", 0), ("finetune", 0)]
    assert {"config.yaml", "plan.json", "model.ckpt", "plots"} <= {p.name for p in out.iterdir()}


# ---- the CLI under torch.distributed.run ----------------------------------------------------------
# float: with rounding in the forward pass the two runs agree to ~1e-7 only until float noise
# flips a rounding (LeNet-5 LSQ w4a4 on digits: step 3), after which they drift apart like any
# two runs with different summation order; the LSQ state itself is checked above
TRAIN = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--batch-size", "128", "--seed", "0",
         "--threads", "1", "--quiet"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lowbit", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    from lowbit.cli.main import main

    out = tmp_path_factory.mktemp("cli") / "single"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def check_ddp_folder(out: Path, reference: Path) -> None:
    """One metrics line per epoch (rank 1 wrote none), no scratch files, weights within ATOL."""
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["epochs"] == 2
    assert [m["epoch"] for m in read_metrics(out / "metrics.jsonl")] == [0, 1]
    assert {"config.yaml", "checkpoint.ckpt", "model.ckpt"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    ddp, single = load_checkpoint(out / "model.ckpt")["model"], load_checkpoint(reference / "model.ckpt")["model"]
    diff = max_diff(ddp, single)
    print(f"CLI {out.name}: max |w_single - w_ddp| = {diff:.3g}")
    assert diff < ATOL
    assert result["accuracy"] == pytest.approx(json.loads((reference / "result.json").read_text())["accuracy"],
                                               abs=1 / 360)  # at most one of the 360 test digits


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_run_folder_from_rank0_only(single_run, tmp_path):
    done = torchrun(*TRAIN, "--out", str(tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    check_ddp_folder(tmp_path / "ddp", single_run)


@pytest.mark.slow
def test_cli_under_torchrun_resumes(single_run, tmp_path, monkeypatch):
    """A single-process run interrupted after epoch 1 is resumed by 2 processes (every rank loads
    the checkpoint): the uninterrupted single-process run's weights within ATOL (digits has 1437
    training samples, so the last batch of 29 is split 14/15)."""
    import lowbit.train.state as state_module
    from lowbit.cli.main import main

    out = tmp_path / "ddp-resumed"
    real_save = state_module.save_checkpoint

    def stop_after_first_epoch(path, payload):
        if payload["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(path, payload)

    monkeypatch.setattr(state_module, "save_checkpoint", stop_after_first_epoch)
    assert main([*TRAIN, "--out", str(out)]) == 130
    monkeypatch.undo()
    done = torchrun("train", "--resume", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    check_ddp_folder(out, single_run)


def test_train_rejects_a_global_batch_not_divisible_by_the_world(tmp_path, monkeypatch):
    import lowbit.runs.lifecycle as lifecycle
    from lowbit.cli.main import main

    monkeypatch.setattr(lifecycle, "init_distributed", lambda device: D.DistInfo(rank=0, world_size=2))
    assert main([*TRAIN, "--batch-size", "127", "--out", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()


# ---- in-process: the sharded loader and the single-process helpers --------------------------------
@pytest.mark.parametrize("world,n,batch,drop_last", [(2, 128, 32, False), (2, 101, 32, False), (3, 101, 30, False),
                                                     (2, 101, 32, True), (4, 130, 8, False), (3, 5, 6, False)])
def test_sharded_loader_union_is_the_single_process_epoch(world, n, batch, drop_last):
    data = load_dataset("synthetic", seed=0, num_classes=4, in_channels=1, input_size=8, n_train=n, n_test=8)

    def make() -> ArrayLoader:
        return ArrayLoader(data.train, batch_size=batch, shuffle=True, seed=1, mean=data.mean, std=data.std,
                           augment="crop_flip", drop_last=drop_last)

    single = make()
    single.set_epoch(2)
    shards = [D.ShardedLoader(make(), r, world) for r in range(world)]
    for shard in shards:
        shard.set_epoch(2)
        assert shard.batch_size == batch // world and len(shard) == len(shards[0])
    batches = [list(s) for s in shards]
    tail = n % batch
    trimmed = drop_last or tail < world  # a tail batch smaller than the world is left out
    assert sum(len(y) for b in batches for _, y in b) == (n - tail if trimmed else n)
    assert len(shards[0]) == len(single) - (1 if trimmed and tail and not drop_last else 0)
    for step, (x, y) in enumerate(single):
        if step == len(shards[0]):
            break
        parts = [b[step] for b in batches]
        sizes = [len(py) for _, py in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) > 0  # near-equal, none empty
        assert torch.equal(torch.cat([py for _, py in parts]), y)  # exactly the single-process batch
        assert torch.equal(torch.cat([px for px, _ in parts]), x)


def test_sharded_loader_needs_a_divisible_batch():
    data = splits()
    with pytest.raises(ConfigError, match="divisible"):
        D.ShardedLoader(global_loader(data, batch_size=33), 0, 2)
    with pytest.raises(ConfigError, match="rank"):
        D.ShardedLoader(global_loader(data), 2, 2)


def test_single_process_without_torchrun(monkeypatch):
    for name in D.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.created, info.is_main) == (0, 1, False, True)
    assert not D.launched_by_torchrun() and not D.is_distributed()
    assert (D.rank(), D.world_size(), D.is_main_process()) == (0, 1, True)
    D.barrier()
    D.cleanup(info)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.launched_by_torchrun() and D.init_distributed("cpu").world_size == 1  # one process: no group
