"""Parallel plan evaluation for ReLeQ and its comparators (issue 10, lowbit.search.parallel): the plan
cache shared by concurrent writers, parallel random search equal to the serial one, ReLeQ with
environments in lockstep, and ``--workers`` on the command line."""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from pathlib import Path

import pytest
import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.search import Budget, CachedEvaluator, FineTuneEvaluator, SyntheticEvaluator, random_search
from lowbit.search.baselines import exhaustive_search
from lowbit.search.parallel import ParallelEvaluator, compact_evaluator
from search_support import comparable_outcome, small_model, small_space, tiny_loaders

SENSITIVE = {"2": 4}


class _Tagged(SyntheticEvaluator):
    """A synthetic evaluator whose accuracies carry its writer's tag (so the cache file shows who
    wrote a plan) and that takes a few milliseconds (so writers overlap)."""

    def __init__(self, space, tag: int, delay: float = 0.0) -> None:
        super().__init__(space, sensitive=SENSITIVE)
        self.tag, self.delay = tag, delay

    def __call__(self, choices):
        time.sleep(self.delay)
        return super().__call__(choices) - 0.001 * self.tag

    def describe(self):  # the same cache header for every writer
        return super().describe()


def _all_plans(space) -> list[list[int]]:
    return [[a, b] for a in space.bit_choices for b in space.bit_choices]


def _cache_lines(path: Path) -> list[dict]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline: no half-written line
    return [json.loads(line) for line in lines[:-1]]


# ---- the cache under concurrent writers ----------------------------------------------------------
def _writer(path: str, tag: int, plans: list[list[int]], barrier, results) -> None:
    torch.set_num_threads(1)
    space = small_space()
    barrier.wait()  # all four open the (new) file at once: the header is written once
    ev = CachedEvaluator(_Tagged(space, tag, delay=0.005), space, path)
    accuracies = {space.key(p): ev(p) for p in plans}
    results.put((tag, accuracies, ev.evaluations, ev.inner.calls, ev.cache_hits))


def test_four_processes_share_one_cache_file(tmp_path) -> None:
    space = small_space()
    plans = _all_plans(space)  # 25 plans
    path = tmp_path / "evaluations.jsonl"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    # overlapping lists: two writers in the same order (they race on every plan), two rotated
    lists = [plans, plans, plans[8:] + plans[:8], plans[::-1][:20]]
    procs = [ctx.Process(target=_writer, args=(str(path), tag, lists[tag], barrier, results)) for tag in range(4)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    lines = _cache_lines(path)  # every line parses
    assert lines[0]["format"] == "lowbit-search-cache" and sum("format" in line for line in lines) == 1
    keys = [line["key"] for line in lines[1:]]
    assert sorted(keys) == sorted(space.key(p) for p in plans)  # every plan exactly once
    in_file = {line["key"]: line["accuracy"] for line in lines[1:]}
    for tag, accuracies, evaluations, calls, hits in got:
        assert accuracies == {k: in_file[k] for k in accuracies}  # first writer wins, for everyone
        assert evaluations == calls and evaluations + hits == len(lists[tag])
    # every evaluation was either written or lost a race to an identical plan; the others were read
    assert sum(g[2] for g in got) >= len(plans)
    reread = CachedEvaluator(_Tagged(space, 9), space, path)
    assert reread.loaded == len(plans) and reread.inner.calls == 0


def test_a_writer_sees_the_others_records_and_the_first_record_wins(tmp_path) -> None:
    space = small_space()
    path = tmp_path / "cache.jsonl"
    first = CachedEvaluator(_Tagged(space, 1), space, path)
    second = CachedEvaluator(_Tagged(space, 2), space, path)  # opened before first wrote anything
    a = first([2, 2])
    assert second([2, 2]) == a and second.inner.calls == 0 and second.external == 1 and second.cache_hits == 1

    class Racing(_Tagged):  # while it evaluates, another writer records the same plan
        def __call__(self, choices):
            first(choices)
            return super().__call__(choices)

    third = CachedEvaluator(Racing(space, 3), space, path)
    record = third.evaluate([4, 4])
    assert record.accuracy == first.lookup([4, 4]).accuracy != _Tagged(space, 3)([4, 4])
    assert third.evaluations == 1  # it paid for the evaluation, but the file keeps the first record
    assert [line["key"] for line in _cache_lines(path)[1:]] == [space.key([2, 2]), space.key([4, 4])]


def test_readers_keep_the_first_record_of_a_plan(tmp_path) -> None:
    space = small_space()
    path = tmp_path / "cache.jsonl"
    CachedEvaluator(_Tagged(space, 1), space, path)([3, 3])
    lines = path.read_text().splitlines()
    later = json.loads(lines[1])
    later["accuracy"] = 0.1  # a duplicate written without the lock (another version or platform)
    path.write_text("\n".join([*lines, json.dumps(later)]) + "\n")
    ev = CachedEvaluator(_Tagged(space, 2), space, path)
    assert ev.loaded == 1 and ev([3, 3]) == json.loads(lines[1])["accuracy"]


def test_a_dead_writers_half_line_is_cut_before_the_next_append(tmp_path) -> None:
    space = small_space()
    path = tmp_path / "cache.jsonl"
    alive = CachedEvaluator(_Tagged(space, 1), space, path)
    alive([2, 2])
    with open(path, "ab") as handle:
        handle.write(b'{"key": "8/32,3/32,3/32,8/32", "choi')  # another writer killed mid-line
    assert alive.refresh() == 0  # readers skip what has no newline yet
    with pytest.warns(UserWarning, match="truncated last line"):
        alive([4, 2])
    assert [line["key"] for line in _cache_lines(path)[1:]] == [space.key([2, 2]), space.key([4, 2])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CachedEvaluator(_Tagged(space, 2), space, path).loaded == 2


def test_a_replaced_cache_file_is_an_error(tmp_path) -> None:
    space = small_space()
    path = tmp_path / "cache.jsonl"
    ev = CachedEvaluator(_Tagged(space, 1), space, path)
    ev([2, 2])
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(CheckpointError, match="shrank"):
        ev([4, 4])


# ---- parallel random search == serial ------------------------------------------------------------
def test_parallel_random_search_equals_the_serial_one(tmp_path) -> None:
    space = small_space()
    runs = [dict(budget=Budget(max_evals=9), seed=0), dict(budget=Budget(max_evals=6), seed=1),  # reuses the cache
            dict(budget=Budget(), seed=2, max_draws=30)]
    serial = CachedEvaluator(SyntheticEvaluator(space, sensitive=SENSITIVE, noise=0.02), space, tmp_path / "s.jsonl")
    expected = [_releq_on(serial, n_envs=2)]  # lockstep, evaluated in the parent
    expected += [random_search(space, serial, **kw) for kw in runs]
    expected.append(exhaustive_search(space, serial, Budget(max_evals=4)))
    inner = SyntheticEvaluator(space, sensitive=SENSITIVE, noise=0.02)
    with ParallelEvaluator(inner, space, tmp_path / "p.jsonl", workers=2) as parallel:
        got = [_releq_on(parallel)]  # n_envs = workers, finished plans evaluated in the workers
        got += [random_search(space, parallel, **kw) for kw in runs]
        got.append(exhaustive_search(space, parallel, Budget(max_evals=4)))
        assert parallel.batches >= 10 and inner.calls == 0  # every plan was evaluated in a worker
    for a, b in zip(expected, got):
        assert comparable_outcome(a) == comparable_outcome(b)
    assert [o.evaluations for o in got[:3]] == [5, 9, 6] and got[0].settings["n_envs"] == 2
    assert [o.settings["stopped"] for o in got[:4]] == ["budget", "budget", "budget", "max_draws"]
    assert (parallel.evaluations, parallel.cache_hits) == (serial.evaluations, serial.cache_hits)
    # the same plans in the same order in both cache files
    assert _cache_lines(tmp_path / "p.jsonl")[0] == _cache_lines(tmp_path / "s.jsonl")[0]
    assert [r["key"] for r in _cache_lines(tmp_path / "p.jsonl")[1:]] == \
        [r["key"] for r in _cache_lines(tmp_path / "s.jsonl")[1:]]


def test_prefetch_then_requests_count_as_serial_requests() -> None:
    space = small_space()
    ev = ParallelEvaluator(SyntheticEvaluator(space), space, workers=1)  # no pool: evaluated in-process
    plans = [[2, 2], [4, 4], [2, 2], [8, 8]]
    records = ev.evaluate_many(plans)
    assert [r.key for r in records] == [space.key(p) for p in plans]
    assert (ev.evaluations, ev.cache_hits) == (3, 1) and ev.prefetch(plans) == 0
    ev.evaluate_many(plans)
    assert (ev.evaluations, ev.cache_hits) == (3, 5)
    with pytest.raises(ConfigError, match="workers"):
        ParallelEvaluator(SyntheticEvaluator(space), space, workers=0)


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_loaders()


def test_compact_evaluator_serves_the_same_batches(tiny_data) -> None:
    space = small_space()
    ev = FineTuneEvaluator(small_model(), space, *tiny_data, steps=3)
    compact = compact_evaluator(ev)
    assert len(compact.train.data) == 64 and len(ev.train.data) == 120 and compact.val is ev.val
    for epoch in (0, 1):
        ev.train.set_epoch(epoch)
        compact.train.set_epoch(epoch)
        for (x1, y1), (x2, y2) in zip(ev.train, compact.train):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert compact(space.normalize([3, 2])) == ev(space.normalize([3, 2]))


@pytest.mark.slow
def test_parallel_fine_tune_search_equals_the_serial_one(tiny_data) -> None:
    space = small_space()
    make = lambda: FineTuneEvaluator(small_model(), space, *tiny_data, steps=4, lr=0.05)  # noqa: E731
    serial = random_search(space, CachedEvaluator(make(), space), Budget(max_evals=4), seed=0)
    with ParallelEvaluator(make(), space, workers=2) as parallel:
        got = random_search(space, parallel, Budget(max_evals=4), seed=0)
        assert parallel.batches == 2
    assert comparable_outcome(got) == comparable_outcome(serial) and got.evaluations == 4


# ---- ReLeQ with environments in lockstep ----------------------------------------------------------
def _releq_on(evaluator, **kwargs):
    from lowbit.search.releq import PPOSettings, releq_search

    return releq_search(evaluator.space, evaluator, Budget(max_evals=5), seed=0,
                        ppo=PPOSettings(episodes_per_update=4, n_epochs=2), **kwargs, state="paper")


def _releq(n_envs: int, **kwargs):
    from lowbit.search.releq import PPOSettings, releq_search

    space = small_space()
    ev = ParallelEvaluator(SyntheticEvaluator(space, sensitive=SENSITIVE), space, workers=1)  # in-process
    try:
        outcome = releq_search(space, ev, Budget(max_evals=kwargs.pop("max_evals", 10)), seed=0, n_envs=n_envs,
                               ppo=PPOSettings(episodes_per_update=4, n_epochs=2), **kwargs, state="paper")
    finally:
        ev.close()
    return outcome, ev


def test_releq_in_lockstep_is_reproducible_with_an_exact_budget() -> None:
    one, _ = _releq(2)
    two, ev = _releq(2)
    assert comparable_outcome(one) == comparable_outcome(two) and one.settings["n_envs"] == 2
    assert one.evaluations == ev.evaluations == 10 and one.settings["stopped"] == "budget"
    assert len({r.key for r in one.records}) == 10
    serial, _ = _releq(1)
    assert serial.settings["n_envs"] == 1 and serial.evaluations == 10
    with pytest.raises(ConfigError, match="multiple"):
        _releq(3)


def test_releq_in_lockstep_resumes_exactly(tmp_path) -> None:
    from lowbit.search.releq import PPOSettings, releq_search

    whole, _ = _releq(2, state_dir=tmp_path / "a")
    space = small_space()
    ev = ParallelEvaluator(SyntheticEvaluator(space, sensitive=SENSITIVE), space, tmp_path / "cache.jsonl", workers=1)
    part = releq_search(space, ev, Budget(max_evals=10), seed=0, n_envs=2,
                        ppo=PPOSettings(episodes_per_update=4, n_epochs=2), state_dir=tmp_path / "c",
                        stop_after_updates=1, state="paper")
    assert part.settings["stopped"] == "interrupted" and 0 < part.evaluations < 10
    ev = ParallelEvaluator(SyntheticEvaluator(space, sensitive=SENSITIVE), space, tmp_path / "cache.jsonl", workers=1)
    resumed = releq_search(space, ev, Budget(max_evals=10), seed=0, n_envs=2,
                           ppo=PPOSettings(episodes_per_update=4, n_epochs=2), state_dir=tmp_path / "c", resume=True, state="paper")
    assert comparable_outcome(resumed) == comparable_outcome(whole)
    with pytest.raises(CheckpointError, match="environment"):
        releq_search(space, ev, Budget(max_evals=10), seed=0, n_envs=1,
                     ppo=PPOSettings(episodes_per_update=4, n_epochs=2), state_dir=tmp_path / "c", resume=True, state="paper")


# ---- the command line ----------------------------------------------------------------------------
@pytest.mark.slow
def test_search_workers_flag_gives_the_serial_result(tmp_path) -> None:
    from lowbit.cli.main import main

    common = ["--strategy", "random", "--model", "lenet5", "--dataset", "digits", "--float-epochs", "1",
              "--max-evals", "3", "--eval-steps", "5", "--eval-train-size", "100", "--finetune-epochs", "0",
              "--quiet", "--threads", "1"]
    assert main(["search", *common, "--out", str(tmp_path / "serial")]) == 0
    init = ["--init", str(tmp_path / "serial" / "float")]
    assert main(["search", *common, *init, "--workers", "2", "--out", str(tmp_path / "parallel")]) == 0
    serial = json.loads((tmp_path / "serial" / "result.json").read_text())
    parallel = json.loads((tmp_path / "parallel" / "result.json").read_text())
    assert parallel["workers"] == parallel["search"]["workers"] == 2 and serial["search"]["workers"] == 1
    for key in ("best", "pareto", "evaluations", "acc_float", "plans_visited"):
        a, b = serial["search"][key], parallel["search"][key]
        if key == "pareto":
            a, b = ([{k: v for k, v in r.items() if k != "wall_s"} for r in x] for x in (a, b))
        assert a == b, key
    assert parallel["accuracy"] == serial["accuracy"]


def test_releq_workers_must_divide_its_episodes(tmp_path, capsys) -> None:
    from lowbit.cli.main import main

    out = tmp_path / "releq"
    assert main(["releq", "--workers", "3", "--max-evals", "4", "--quiet", "--out", str(out)]) == 2
    assert "--workers must divide 8" in capsys.readouterr().err and not out.exists()
