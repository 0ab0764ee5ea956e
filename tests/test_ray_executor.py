"""The Ray executor (issue 20, lowbit.executors): plan evaluations and DCQ sections as Ray tasks give
what the local executor gives, the cache keeps one writer and resumes, a worker killed mid-evaluation
is retried with nothing lost or written twice, and ``--executor ray`` without Ray says how to install it.

One local Ray instance (``ray.init(num_cpus=2)``) serves the module; its workers find this folder's
modules (the test evaluators) through PYTHONPATH. Without Ray the Ray tests are skipped."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from lowbit.data import ArrayLoader, load_dataset
from lowbit.distill import DCQConfig, dcq_quantize
from lowbit.errors import ConfigError, LowbitError
from lowbit.models import create_model
from lowbit.plan import Plan
from lowbit.search import Budget, CachedEvaluator, FineTuneEvaluator, SyntheticEvaluator, random_search
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.reward import RewardConfig
from lowbit.search.strategies import run_strategy
from lowbit.train import TrainConfig, fit
from search_support import comparable_outcome, small_model, small_space, tiny_loaders

HERE = Path(__file__).resolve().parent
SENSITIVE = {"2": 4}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,  # not a `ray start` one
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    if started:
        ray.shutdown()


class DiesOnce(SyntheticEvaluator):
    """Kills its worker process (``os._exit``) in the middle of evaluating ``plan``, the first time
    only: the marker file says a process already died there (the retry then evaluates normally)."""

    def __init__(self, space, plan_key: str, marker: str) -> None:
        super().__init__(space, sensitive=SENSITIVE, noise=0.02)
        self.plan_key, self.marker = plan_key, marker

    def __call__(self, choices):
        if self.space.key(choices) == self.plan_key and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(0.2)  # mid-evaluation
            os._exit(1)
        return super().__call__(choices)


def _die(item):  # a task whose worker always dies
    os._exit(1)


def _cache(path: Path) -> tuple[dict, list[tuple[str, float]]]:
    """(header, [(key, accuracy)] in file order); every line whole."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    return lines[0], [(r["key"], r["accuracy"]) for r in lines[1:]]


def _synthetic(space):
    return SyntheticEvaluator(space, sensitive=SENSITIVE, noise=0.02)


# ---- plan evaluations ------------------------------------------------------------------------
def test_random_search_and_releq_on_ray_equal_the_local_executor(tmp_path, ray_cluster) -> None:
    from lowbit.search.releq import PPOSettings, releq_search

    space = small_space()
    ppo = PPOSettings(episodes_per_update=4, n_epochs=2)

    def search(ev):
        return [releq_search(space, ev, Budget(max_evals=5), seed=0, ppo=ppo, n_envs=2, state="paper"),
                random_search(space, ev, Budget(max_evals=9), seed=0),
                random_search(space, ev, Budget(max_evals=6), seed=1)]  # partly from the cache

    local = search(ParallelEvaluator(_synthetic(space), space, tmp_path / "local.jsonl", workers=1))
    inner = _synthetic(space)
    with ParallelEvaluator(inner, space, tmp_path / "ray.jsonl", workers=2, executor="ray") as ev:
        got = search(ev)
        assert ev.batches >= 5 and inner.calls == 0  # every plan went to a Ray task
    assert [comparable_outcome(o) for o in got] == [comparable_outcome(o) for o in local]
    assert _cache(tmp_path / "ray.jsonl") == _cache(tmp_path / "local.jsonl")
    assert ray_cluster.is_initialized()  # a Ray the caller started stays up


def test_one_worker_on_ray_sends_each_plan_to_the_cluster(tmp_path, ray_cluster) -> None:
    space = small_space()
    serial = random_search(space, CachedEvaluator(_synthetic(space), space), Budget(max_evals=4), seed=3)
    inner = _synthetic(space)
    with ParallelEvaluator(inner, space, workers=1, executor="ray") as ev:
        got = random_search(space, ev, Budget(max_evals=4), seed=3)
        assert inner.calls == 0 and ev.evaluations == 4
    assert comparable_outcome(got) == comparable_outcome(serial)


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_loaders()


def test_fine_tune_search_on_ray_equals_the_local_pool(tmp_path, tiny_data, ray_cluster) -> None:
    space = small_space()
    make = lambda: FineTuneEvaluator(small_model(), space, *tiny_data, steps=4, lr=0.05)  # noqa: E731
    outcomes = {}
    for executor in ("local", "ray"):
        with ParallelEvaluator(make(), space, tmp_path / f"{executor}.jsonl", workers=2, executor=executor) as ev:
            outcomes[executor] = random_search(space, ev, Budget(max_evals=4), seed=0)
            assert ev.batches == 2
    assert comparable_outcome(outcomes["ray"]) == comparable_outcome(outcomes["local"])
    header, records = _cache(tmp_path / "ray.jsonl")
    assert (header, records) == _cache(tmp_path / "local.jsonl") and len(records) == 4


def test_a_search_resumes_from_a_partial_cache_on_ray(tmp_path, ray_cluster) -> None:
    space = small_space()
    settings = dict(time_limit=None, seed=0, reward_config=RewardConfig())
    whole = run_strategy("random", space, CachedEvaluator(_synthetic(space), space, tmp_path / "whole.jsonl"),
                         max_evals=8, **settings)
    with ParallelEvaluator(_synthetic(space), space, tmp_path / "part.jsonl", workers=2, executor="ray") as ev:
        run_strategy("random", space, ev, max_evals=3, **settings)  # interrupted after 3 evaluations
    inner = _synthetic(space)
    with ParallelEvaluator(inner, space, tmp_path / "part.jsonl", workers=2, executor="ray") as ev:
        assert ev.loaded == 3
        resumed = run_strategy("random", space, ev, max_evals=8, **settings)
        assert ev.evaluations == 5 and inner.calls == 0
    assert resumed.best.key == whole.best.key and resumed.best.accuracy == whole.best.accuracy
    assert _cache(tmp_path / "part.jsonl") == _cache(tmp_path / "whole.jsonl")


def test_a_worker_killed_mid_evaluation_is_retried_with_nothing_lost_or_doubled(tmp_path, ray_cluster) -> None:
    space = small_space()
    undisturbed = random_search(space, CachedEvaluator(_synthetic(space), space, tmp_path / "calm.jsonl"),
                                Budget(max_evals=8), seed=0)
    victim = undisturbed.records[2].key  # in the second batch of two
    marker = tmp_path / "died"
    with ParallelEvaluator(DiesOnce(space, victim, str(marker)), space, tmp_path / "ray.jsonl", workers=2,
                           executor="ray") as ev:
        got = random_search(space, ev, Budget(max_evals=8), seed=0)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a Ray worker died, not this process
    assert comparable_outcome(got) == comparable_outcome(undisturbed)
    header, records = _cache(tmp_path / "ray.jsonl")
    assert (header, records) == _cache(tmp_path / "calm.jsonl")
    assert len(records) == len({key for key, _ in records}) == 8  # each plan once


def test_a_task_that_keeps_dying_is_an_error_naming_it(ray_cluster) -> None:
    from lowbit.executors import RayTasks

    tasks = RayTasks(max_retries=0)
    with pytest.raises(LowbitError, match="task 1 failed on Ray after 0 retries.*run it again"):
        list(tasks.map(_die, [0]))
    assert not tasks.started  # the test's Ray was used, not a new one
    with pytest.raises(ZeroDivisionError):  # a task's own exception is raised as it is, not retried
        list(tasks.map(_divide, [0]))


def _divide(x):
    return 1 / x


# ---- DCQ sections --------------------------------------------------------------------------------
def test_dcq_sections_on_ray_equal_the_local_executor(ray_cluster) -> None:
    data = load_dataset("synthetic", seed=0, kind="sequence", input_size=40, n_train=192, n_test=64)
    train = ArrayLoader(data.train, batch_size=64, shuffle=True, seed=0, mean=data.mean, std=data.std)
    torch.manual_seed(0)
    teacher = create_model("conv1d", in_channels=1, input_size=40, width_mult=0.5)
    fit(teacher, train, TrainConfig(epochs=1, lr=0.05))
    kw = dict(plan=Plan.uniform(2), quantizer="dorefa", sections=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sections' thread count in a worker
    try:
        local = dcq_quantize(teacher.eval(), train, config=DCQConfig(train=TrainConfig(epochs=1, lr=0.01)), **kw)
    finally:
        torch.set_num_threads(threads)
    remote = dcq_quantize(teacher, train, config=DCQConfig(train=TrainConfig(epochs=1, lr=0.01), executor="ray",
                                                           workers=2), **kw)
    a, b = local.model.state_dict(), remote.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [s.history[-1]["loss"] for s in local.sections] == [s.history[-1]["loss"] for s in remote.sections]
    with pytest.raises(ConfigError, match="independent"):
        DCQConfig(mode="sequential", executor="ray")


# ---- the command line ------------------------------------------------------------------------------
@pytest.mark.slow
def test_search_executor_flag_gives_the_local_result(tmp_path, ray_cluster) -> None:
    from lowbit.cli.main import main

    common = ["--strategy", "random", "--model", "lenet5", "--dataset", "digits", "--float-epochs", "1",
              "--max-evals", "3", "--eval-steps", "5", "--eval-train-size", "100", "--finetune-epochs", "0",
              "--quiet", "--threads", "1", "--workers", "2"]
    assert main(["search", *common, "--out", str(tmp_path / "local")]) == 0
    init = ["--init", str(tmp_path / "local" / "float")]
    assert main(["search", *common, *init, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    local, ray = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("local", "ray"))
    assert (local["executor"], ray["executor"]) == ("local", "ray")
    assert _cache(tmp_path / "ray" / "evaluations.jsonl")[1] == _cache(tmp_path / "local" / "evaluations.jsonl")[1]
    assert (tmp_path / "ray" / "plan.json").read_text() == (tmp_path / "local" / "plan.json").read_text()
    assert ray["search"]["best"] == local["search"]["best"] and ray["accuracy"] == local["accuracy"]


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch, capsys) -> None:
    from lowbit.cli.main import main
    from lowbit.executors import check_executor
    from lowbit.runs.dcq_run import DcqOptions

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'lowbit\[ray\]'"):
        check_executor("ray", None)
    with pytest.raises(ConfigError, match=r"lowbit\[ray\]"):
        DcqOptions(model="lenet5", sections=2, wbits=2, executor="ray").validate()
    with pytest.raises(ConfigError, match=r"lowbit\[ray\]"):
        ParallelEvaluator(_synthetic(small_space()), small_space(), executor="ray")
    out = tmp_path / "run"
    assert main(["search", "--strategy", "random", "--executor", "ray", "--max-evals", "2", "--quiet",
                 "--out", str(out)]) == 2
    assert "pip install 'lowbit[ray]'" in capsys.readouterr().err and not out.exists()
    assert main(["search", "--strategy", "random", "--ray-address", "auto", "--out", str(out)]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err
    assert main(["dcq", "--model", "lenet5", "--sections", "2", "--wbits", "2", "--executor", "rey",
                 "--out", str(out)]) == 2
    assert "did you mean 'ray'" in capsys.readouterr().err
