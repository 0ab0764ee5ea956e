"""Interruption: SIGINT/SIGTERM finish the step, write an exact mid-epoch checkpoint and exit with
130/143; SIGKILL at random moments (one inside a checkpoint write) and --resume end with the
weights of an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit.runs.train_run as train_run_module
from lowbit.cli.main import main
from lowbit.data import ArrayLoader, load_dataset
from lowbit.errors import EXIT_SIGINT, EXIT_SIGTERM, CheckpointError, LowbitError, NumericsError, TrainingInterrupted
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.runs.folder import RunFolder
from lowbit.train import LossTerm, MetricsWriter, TrainConfig, fit, load_checkpoint, read_metrics
from lowbit.train.interrupt import InterruptGuard

SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = 4  # batches per epoch of the synthetic loaders below


@pytest.fixture(scope="module")
def splits():
    return load_dataset("synthetic", seed=0, num_classes=4, in_channels=1, input_size=8, n_train=128, n_test=64)


def train_loader(splits) -> ArrayLoader:
    # augmentation draws from the epoch's generator: skipping batches on resume must still consume it
    return ArrayLoader(splits.train, batch_size=32, shuffle=True, seed=3, mean=splits.mean, std=splits.std,
                       augment="crop_flip")


def model_with_dropout(seed: int = 0) -> nn.Module:
    """Dropout draws from the global RNG, so the checkpoint's RNG state matters; LSQ has state."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 8 * 8, 4))
    quantize_(model, Plan.uniform(3, 3), "lsq")
    return model


def l2(model: nn.Module) -> torch.Tensor:
    return sum((p ** 2).sum() for p in model.parameters())


CONFIG = TrainConfig(epochs=3, lr=0.05)
TERMS = [LossTerm("l2", l2, weight=lambda progress: 1e-4 * (1 + progress))]


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_s"} for r in records]


def signal_at(step: int, *signums: int):
    """A step callback that sends ``signums`` to this process after global step ``step`` (1-based)."""
    count = [0]

    def callback(model: nn.Module, progress: float) -> None:
        count[0] += 1
        if count[0] == step:
            for signum in signums:
                os.kill(os.getpid(), signum)

    return callback


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    model = model_with_dropout()
    result = fit(model, train_loader(splits), CONFIG, loss_terms=TERMS, checkpoint_path=folder / "c.ckpt",
                 metrics=MetricsWriter(folder / "metrics.jsonl"))
    return model.state_dict(), result.history, read_metrics(folder / "metrics.jsonl")


# ---- in-process: the guard, the mid-epoch checkpoint, exact resume ------------------------------

@pytest.mark.parametrize("signum, step", [(signal.SIGTERM, STEPS + 2), (signal.SIGINT, 1),
                                          (signal.SIGTERM, 2 * STEPS)],
                         ids=["sigterm-mid-epoch2", "sigint-first-step", "sigterm-last-step-of-epoch2"])
def test_signal_finishes_the_step_and_resume_is_exact(splits, tmp_path, reference, signum, step):
    ref_state, ref_history, ref_metrics = reference
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ckpt, metrics = tmp_path / "c.ckpt", tmp_path / "metrics.jsonl"
    with pytest.raises(TrainingInterrupted) as info:
        fit(model_with_dropout(), train_loader(splits), CONFIG, loss_terms=TERMS,
            step_callbacks=[signal_at(step, signum)], checkpoint_path=ckpt, metrics=MetricsWriter(metrics))
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    exc = info.value
    epoch, in_epoch = divmod(step - 1, STEPS)
    assert exc.exit_code == {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}[signum]
    assert exc.signal_number == signum and exc.checkpoint == str(ckpt)
    assert f"epoch {epoch + 1}, step {in_epoch + 1}/{STEPS}" in str(exc) and "--resume" in str(exc)
    assert ("SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM") in str(exc)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == epoch - 1 and state["partial"]["epoch"] == epoch
    assert state["partial"]["steps"] == in_epoch + 1 and len(state["history"]) == epoch
    assert [r["epoch"] for r in read_metrics(metrics)] == list(range(epoch))

    torch.manual_seed(999)  # another process: other RNG state, other initial weights
    resumed = model_with_dropout(seed=5)
    result = fit(resumed, train_loader(splits), CONFIG, loss_terms=TERMS, checkpoint_path=ckpt, resume=True,
                 metrics=MetricsWriter(metrics))
    assert result.resumed_from_epoch == epoch - 1 and result.resumed_at_step == in_epoch + 1
    assert_state_equal(resumed.state_dict(), ref_state)
    assert strip_time(result.history) == strip_time(ref_history)  # the interrupted epoch's means too
    assert strip_time(read_metrics(metrics)) == strip_time(ref_metrics)
    assert "partial" not in load_checkpoint(ckpt)


def test_signal_after_the_last_step_stops_after_the_epoch_checkpoint(splits, tmp_path, reference):
    """A signal during evaluation/callbacks: the epoch's own checkpoint is written, then it stops."""
    def callback(epoch: int, model: nn.Module) -> dict:
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with pytest.raises(TrainingInterrupted, match="end of epoch 1") as info:
        fit(model_with_dropout(), train_loader(splits), CONFIG, loss_terms=TERMS, callbacks=[callback],
            checkpoint_path=tmp_path / "c.ckpt")
    assert info.value.exit_code == EXIT_SIGTERM
    state = load_checkpoint(tmp_path / "c.ckpt")
    assert state["epoch"] == 0 and "partial" not in state
    resumed = model_with_dropout(seed=5)
    fit(resumed, train_loader(splits), CONFIG, loss_terms=TERMS, checkpoint_path=tmp_path / "c.ckpt", resume=True)
    assert_state_equal(resumed.state_dict(), reference[0])


def test_without_a_checkpoint_path_the_step_is_finished_and_nothing_written(splits, tmp_path):
    with pytest.raises(TrainingInterrupted, match="nothing to resume") as info:
        fit(model_with_dropout(), train_loader(splits), CONFIG, step_callbacks=[signal_at(3, signal.SIGINT)])
    assert info.value.checkpoint is None and info.value.exit_code == EXIT_SIGINT
    assert isinstance(info.value, LowbitError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries (DCQ's worker pool) intact
    assert (type(again), str(again), again.exit_code, again.checkpoint) == (TrainingInterrupted, str(info.value),
                                                                           EXIT_SIGINT, None)


def test_second_signal_stops_at_once_keeping_the_last_checkpoint(splits, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(TrainingInterrupted, match="second SIGTERM") as info:
        fit(model_with_dropout(), train_loader(splits), CONFIG, checkpoint_path=ckpt,
            step_callbacks=[signal_at(STEPS + 2, signal.SIGTERM, signal.SIGTERM)])
    assert info.value.checkpoint is None
    state = load_checkpoint(ckpt)  # the end of epoch 1, intact
    assert state["epoch"] == 0 and "partial" not in state


def test_handlers_are_restored_after_errors_and_untouched_off_the_main_thread(splits, tmp_path):
    mine = lambda signum, frame: None  # noqa: E731
    old = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(NumericsError):
            fit(model_with_dropout(), train_loader(splits), CONFIG,
                loss_terms=[LossTerm("bad", lambda m: torch.tensor(float("nan")))])
        assert signal.getsignal(signal.SIGTERM) is mine
        seen = []

        def worker() -> None:
            guard = InterruptGuard()
            with guard:
                seen.append(guard.active)
            fit(model_with_dropout(), train_loader(splits), TrainConfig(epochs=1, lr=0.05))
            seen.append(signal.getsignal(signal.SIGTERM))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [False, mine]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_malformed_partial_state_is_a_checkpoint_error(splits, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(TrainingInterrupted):
        fit(model_with_dropout(), train_loader(splits), CONFIG, checkpoint_path=ckpt,
            step_callbacks=[signal_at(2, signal.SIGTERM)])
    from lowbit.train.checkpoint import save_checkpoint

    state = load_checkpoint(ckpt)
    state["partial"]["epoch"] = 2  # does not follow the last complete epoch
    save_checkpoint(ckpt, state)
    with pytest.raises(CheckpointError, match="partial"):
        fit(model_with_dropout(), train_loader(splits), CONFIG, checkpoint_path=ckpt, resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mid_epoch_interrupt_and_resume_on_cuda(splits, tmp_path):
    """On CUDA (AMP on): the running sums come back to the device, RNG states stay CPU tensors."""
    cfg = TrainConfig(epochs=2, lr=0.05, device="cuda")
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(TrainingInterrupted):
        fit(model_with_dropout(), train_loader(splits), cfg, loss_terms=TERMS, checkpoint_path=ckpt,
            step_callbacks=[signal_at(STEPS + 2, signal.SIGTERM)])
    state = load_checkpoint(ckpt)
    assert state["partial"]["steps"] == 2 and state["scaler"]
    model = model_with_dropout(seed=5)
    result = fit(model, train_loader(splits), cfg, loss_terms=TERMS, checkpoint_path=ckpt, resume=True)
    assert result.resumed_at_step == 2 and len(result.history) == 2
    assert all(t.is_cuda for t in model.state_dict().values())


# ---- in-process CLI: exit code, message, resume; a run stopped before its first checkpoint --------

DIGITS = ["--model", "lenet5", "--dataset", "digits", "--epochs", "3", "--batch-size", "128", "--seed", "1",
          "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cli") / "ref"
    assert main(["train", *DIGITS, "--out", str(out)]) == 0
    return load_checkpoint(out / "model.ckpt")["model"]


def with_step_callback(monkeypatch, callback) -> None:
    real_fit = train_run_module.fit

    def patched(*args, **kwargs):
        kwargs["step_callbacks"] = [*kwargs.get("step_callbacks", ()), callback]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_run_module, "fit", patched)


def test_cli_ctrl_c_exits_130_with_a_checkpoint_and_resume_is_exact(tmp_path, monkeypatch, capsys, cli_reference):
    out = tmp_path / "run"
    with_step_callback(monkeypatch, signal_at(15, signal.SIGINT))  # 12 steps per epoch: epoch 2, step 3
    assert main(["train", *DIGITS, "--out", str(out)]) == EXIT_SIGINT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "stopped: interrupted by SIGINT (Ctrl-C) at epoch 2, step 3/12" in " ".join(err.split())
    assert "--resume" in err and str(out / "checkpoint.ckpt") in " ".join(err.split())
    assert not (out / "result.json").exists() and not (out / "model.ckpt").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert_state_equal(load_checkpoint(out / "model.ckpt")["model"], cli_reference)
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]


def test_cli_resume_of_a_run_stopped_before_its_first_checkpoint(tmp_path, monkeypatch, cli_reference):
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        kwargs["metrics"].write({"epoch": 0, "train_loss": 1.0})  # as if killed after the metrics line
        (out / ".checkpoint.ckpt.x1y2.tmp").write_bytes(b"half a checkpoint")  # and mid-write
        raise OSError("simulated crash")

    monkeypatch.setattr(train_run_module, "fit", crash)
    with pytest.raises(OSError, match="simulated"):
        main(["train", *DIGITS, "--out", str(out)])
    monkeypatch.undo()
    assert RunFolder(out).started_without_checkpoint()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert_state_equal(load_checkpoint(out / "model.ckpt")["model"], cli_reference)
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_does_not_start_over_in_another_commands_folder(tmp_path, capsys):
    out = tmp_path / "waveq-run"
    out.mkdir()
    (out / "config.yaml").write_text("model: lenet5\nbudget: 3.0\nlambda_w: 1.0\n")
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2
    assert "not a 'lowbit train' run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_a_folder_holding_only_scratch_files_takes_a_new_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".write-test").write_text("")
    (out / ".config.yaml.abc.tmp").write_text("")
    RunFolder(out).check(resume=False)
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(LowbitError, match="already holds a run"):
        RunFolder(out).check(resume=False)


# ---- subprocesses: SIGKILL at random moments, SIGTERM -------------------------------------------

EPOCHS = 5
SUB_ARGS = ["--model", "lenet5", "--dataset", "digits", "--epochs", str(EPOCHS), "--batch-size", "64",
            "--seed", "0", "--threads", "1", "--quiet"]

# Loaded at interpreter start-up of the subprocesses (via PYTHONPATH): with LOWBIT_TEST_SLOW_REPLACE
# set, the rename that completes a checkpoint write (temp file written and fsync'd) waits that
# many seconds after touching LOWBIT_TEST_MARKER: a window in which the test kills the process.
SITECUSTOMIZE = '''
import os, time
if os.environ.get("LOWBIT_TEST_SLOW_REPLACE"):
    _delay, _marker, _real = float(os.environ["LOWBIT_TEST_SLOW_REPLACE"]), os.environ["LOWBIT_TEST_MARKER"], os.replace

    def _slow_replace(src, dst, *args, **kwargs):
        if str(dst).endswith("checkpoint.ckpt"):
            open(_marker, "w").close()
            time.sleep(_delay)
        return _real(src, dst, *args, **kwargs)

    os.replace = _slow_replace
'''


@pytest.fixture(scope="module")
def sub_reference(tmp_path_factory) -> dict:
    """The uninterrupted run, in this process (one thread, like the subprocesses)."""
    out = tmp_path_factory.mktemp("sub") / "ref"
    assert main(["train", *SUB_ARGS, "--out", str(out)]) == 0
    return load_checkpoint(out / "model.ckpt")["model"]


@pytest.fixture
def launcher(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    procs = []

    def launch(argv: list[str], name: str, **env_extra: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(SRC)]), "COLUMNS": "400",
               **env_extra}
        stderr = open(tmp_path / f"{name}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "lowbit", "train", *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        proc.log = tmp_path / f"{name}.err"
        procs.append(proc)
        return proc

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    """Poll until ``predicate()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training subprocess")


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL; 'killed' or 'had finished' (the kill came after the process ended)."""
    if proc.poll() is not None:
        return f"had finished (rc {proc.returncode})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return "killed" if proc.returncode == -signal.SIGKILL else f"rc {proc.returncode}"


def metrics_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def state_of(out: Path) -> str:
    if not (out / "checkpoint.ckpt").exists():
        return "no checkpoint" if (out / "config.yaml").exists() else "no run folder"
    state = load_checkpoint(out / "checkpoint.ckpt")
    return f"checkpoint after epoch {state['epoch'] + 1}"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, launcher, sub_reference):
    rng = random.Random(9)
    out = tmp_path / "run"
    log = []
    resume = ["--resume", "--out", str(out), "--quiet", "--threads", "1"]

    # 1: shortly after the run folder appears (first epoch, before or around the first checkpoint)
    proc = launcher([*SUB_ARGS, "--out", str(out)], "1")
    wait_for(lambda: (out / "config.yaml").exists(), proc)
    delay = rng.uniform(0.0, 0.6)
    time.sleep(delay)
    log.append(f"kill 1: {delay:.2f}s after config.yaml: {kill(proc)}; {state_of(out)}")

    # 2: inside a checkpoint write: temp file complete, rename not yet done
    marker = tmp_path / "writing"
    proc = launcher(resume, "2", LOWBIT_TEST_SLOW_REPLACE="1.5", LOWBIT_TEST_MARKER=str(marker))
    assert wait_for(marker.exists, proc), proc.log.read_text()
    delay = rng.uniform(0.0, 0.4)
    time.sleep(delay)
    temps = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.ckpt.") and p.name.endswith(".tmp")]
    assert temps, "the kill must land while the checkpoint's temp file exists"
    log.append(f"kill 2: {delay:.2f}s into a checkpoint write ({temps[0]} on disk): {kill(proc)}; {state_of(out)}")

    # 3: a random moment after the next epoch ends
    proc = launcher(resume, "3")
    started, lines = time.monotonic(), metrics_lines(out)
    wait_for(lambda: metrics_lines(out) > lines, proc)
    first_epoch_s = time.monotonic() - started  # start-up + one epoch on this machine, now
    delay = rng.uniform(0.0, 0.5)
    time.sleep(delay)
    log.append(f"kill 3: {delay:.2f}s after an epoch's metrics line: {kill(proc)}; {state_of(out)}")

    # 4: a random moment of the whole process, start-up included (scaled to this machine's speed)
    proc = launcher(resume, "4")
    delay = rng.uniform(0.2, 1.2) * first_epoch_s
    time.sleep(delay)
    log.append(f"kill 4: {delay:.2f}s after launch (start-up + 1 epoch took {first_epoch_s:.2f}s): "
               f"{kill(proc)}; {state_of(out)}")

    proc = launcher(resume, "5")
    assert proc.wait(timeout=120) == 0, proc.log.read_text()
    print("\n".join(log))
    assert_state_equal(load_checkpoint(out / "model.ckpt")["model"], sub_reference)
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == list(range(EPOCHS))
    assert json.loads((out / "result.json").read_text())["epochs"] == EPOCHS
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigterm_subprocess_exits_143_with_a_checkpoint_and_resume_is_exact(tmp_path, launcher, sub_reference):
    out = tmp_path / "run"
    proc = launcher([*SUB_ARGS, "--out", str(out)], "term")
    wait_for(lambda: (out / "checkpoint.ckpt").exists(), proc)  # epoch 1 done: the guard is installed
    time.sleep(0.1)  # most likely mid-way through epoch 2 (an epoch takes ~0.3 s); either way is exact
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_SIGTERM
    err = " ".join(proc.log.read_text().split())
    assert "Traceback" not in err
    assert "stopped: interrupted by SIGTERM at" in err and "(the step was finished)" in err
    assert f"checkpoint written to {out / 'checkpoint.ckpt'}; continue with --resume" in err
    state = load_checkpoint(out / "checkpoint.ckpt")
    assert state["epoch"] >= 0 and not (out / "model.ckpt").exists()
    print(f"\nSIGTERM: rc {proc.returncode}; {err}; checkpoint: epoch {state['epoch'] + 1} done, "
          f"partial {({k: state['partial'][k] for k in ('epoch', 'steps')} if 'partial' in state else None)}")
    # resumed in this process (saves a start-up): a checkpoint of one process continues in another
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert_state_equal(load_checkpoint(out / "model.ckpt")["model"], sub_reference)
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == list(range(EPOCHS))
