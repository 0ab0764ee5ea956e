"""Evaluators of lowbit.search: the JSON-lines cache, the budget, the synthetic and fine-tune evaluators."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from lowbit.data import ArrayLoader, hold_out
from lowbit.data.synthetic import load_synthetic
from lowbit.errors import CheckpointError, ConfigError
from lowbit.nn.convert import quantize_
from lowbit.search import (Budget, BudgetExhausted, CachedEvaluator, Evaluator, FineTuneEvaluator,
                           SyntheticEvaluator, random_search)
from search_support import small_model, small_space

PLANS = [[2, 2], [4, 2], [8, 5], [3, 3]]


def _cached(tmp_path=None, **kwargs):
    space = small_space()
    inner = SyntheticEvaluator(space, sensitive={"2": 4}, **kwargs)
    path = None if tmp_path is None else tmp_path / "cache.jsonl"
    return space, inner, CachedEvaluator(inner, space, path)


def test_cache_hit_does_not_reevaluate() -> None:
    space, inner, ev = _cached()
    assert isinstance(ev, Evaluator) and isinstance(inner, Evaluator)
    first = [ev(p) for p in PLANS]
    again = [ev(p) for p in PLANS + [[(2, 32), (2, 32)]]]  # the same plan written as pairs
    assert again[:4] == first and again[4] == first[0]
    assert inner.calls == 4 and ev.evaluations == 4 and ev.cache_hits == 5
    rec = ev.records[1]
    assert rec.key == space.key([4, 2]) == "8/32,4/32,2/32,8/32"
    assert rec.choices == ((4, 32), (2, 32)) and rec.avg_bits == 5.5 and rec.wall_s >= 0
    assert rec.weighted_bits == pytest.approx(space.weighted_bits([4, 2]))


def test_cache_survives_reload(tmp_path) -> None:
    _, inner, ev = _cached(tmp_path)
    first = [ev(p) for p in PLANS]
    _, inner2, ev2 = _cached(tmp_path)
    assert ev2.loaded == 4 and [r.key for r in ev2.records] == [r.key for r in ev.records]
    assert [ev2(p) for p in PLANS] == first
    assert inner2.calls == 0 and ev2.evaluations == 0 and ev2.cache_hits == 4
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == "lowbit-search-cache" and len(lines) == 5


def test_truncated_last_line_is_dropped(tmp_path) -> None:
    _, _, ev = _cached(tmp_path)
    for p in PLANS[:3]:
        ev(p)
    path = tmp_path / "cache.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"key": "8/32,3/32,3/32,8/32", "choi')  # killed mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        _, inner2, ev2 = _cached(tmp_path)
    assert ev2.loaded == 3 and path.read_bytes().endswith(b"\n")
    ev2([3, 3])
    assert inner2.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, ev3 = _cached(tmp_path)
    assert ev3.loaded == 4


def test_truncated_header_starts_over(tmp_path) -> None:
    path = tmp_path / "cache.jsonl"
    path.write_bytes(b'{"format": "lowbit-sea')
    with pytest.warns(UserWarning):
        _, _, ev = _cached(tmp_path)
    ev([2, 2])
    assert _cached(tmp_path)[2].loaded == 1


def test_corrupt_cache_raises_naming_the_file(tmp_path) -> None:
    _, _, ev = _cached(tmp_path)
    for p in PLANS:
        ev(p)
    path = tmp_path / "cache.jsonl"
    good = path.read_text().splitlines()
    for lines, match in [
        (good[:2] + ["not json"] + good[2:], "line 3"),
        (good[:2] + ["[1, 2]"] + good[2:], "line 3"),
        (good + [good[1].replace('"accuracy": ', '"accuracy": 7')], "line 6"),
        (good + [good[1].replace('"key": "8/32,', '"key": "5/32,')], "does not match"),
        (["{}"] + good[1:], "different format"),
    ]:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(CheckpointError, match=match) as info:
            _cached(tmp_path)
        assert str(path) in str(info.value)


def test_cache_for_another_evaluator_or_space_is_refused(tmp_path) -> None:
    _, _, ev = _cached(tmp_path)
    ev([2, 2])
    with pytest.raises(CheckpointError, match="different evaluator"):
        _cached(tmp_path, drop=0.5)
    space = small_space(bit_choices=(2, 4, 8))
    with pytest.raises(CheckpointError, match="different space"):
        CachedEvaluator(SyntheticEvaluator(space, sensitive={"2": 4}), space, tmp_path / "cache.jsonl")


def test_bad_accuracy_from_the_inner_evaluator() -> None:
    class Broken:
        def __call__(self, choices):
            return 1.5

        def float_accuracy(self):
            return 0.9

    space = small_space()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        CachedEvaluator(Broken(), space)([2, 2])


# ---- budget ------------------------------------------------------------------------------------
def test_budget_counts_only_new_evaluations() -> None:
    space, inner, ev = _cached()
    first = random_search(space, ev, Budget(max_evals=5), seed=0)
    assert first.evaluations == 5 and inner.calls == 5 and first.settings["stopped"] == "budget"
    second = random_search(space, ev, Budget(max_evals=5), seed=1)
    assert second.evaluations == 5 and inner.calls == 10
    assert second.cache_hits > 0  # seed 1 redraws plans seed 0 paid for; they cost nothing
    assert len(second.records) > 5


def test_budget_time_limit(monkeypatch) -> None:
    import lowbit.search.budget as budget_module

    now = [100.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now[0])
    _, _, ev = _cached()
    tracker = Budget(time_limit_s=10).start(ev)
    now[0] = 109.0
    assert not tracker.exhausted()
    now[0] = 110.0
    assert tracker.exhausted() and tracker.elapsed_s == 10.0


def test_budget_tracker_and_validation() -> None:
    _, _, ev = _cached()
    tracker = Budget(max_evals=2).start(ev)
    ev([2, 2])
    tracker.check()
    ev([2, 2])  # a cache hit: not counted
    assert tracker.used_evals == 1 and not tracker.exhausted()
    ev([4, 4])
    assert tracker.exhausted()
    with pytest.raises(BudgetExhausted, match="2 new evaluation"):
        tracker.check()
    assert Budget().unlimited and not Budget().start(ev).exhausted()
    for bad in [{"max_evals": 0}, {"max_evals": 2.5}, {"time_limit_s": -1}, {"max_evals": True}]:
        with pytest.raises(ConfigError):
            Budget(**bad)


# ---- synthetic ---------------------------------------------------------------------------------
def test_synthetic_evaluator_by_hand() -> None:
    space = small_space()
    ev = SyntheticEvaluator(space, acc_float=0.9, sensitive={"2": 4}, drop=0.3, slope=0.06)
    # all at 8: nothing lost
    assert ev([8, 8]) == pytest.approx(0.9)
    # (4, 2): lost = mean((8-4)/6, (8-2)/6) = 5/6 -> 0.9 - 0.06 * 5/6 = 0.85
    assert ev([4, 2]) == pytest.approx(0.85)
    # (3, 2): lost = ((8-3)/6 + (8-2)/6) / 2 = 11/12, and layer '2' is below its floor 4 (drop 0.3):
    # 0.9 - 0.06 * 11/12 - 0.3 = 0.9 - 0.055 - 0.3 = 0.545
    assert ev([3, 2]) == pytest.approx(0.545)
    assert ev.optimum() == ((4, 32), (2, 32))
    with pytest.raises(ConfigError, match="did you mean"):
        SyntheticEvaluator(space, sensitive={"22": 4})


# ---- fine-tune ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data():
    splits = load_synthetic(None, seed=0, num_classes=10, input_size=8, n_train=160, n_test=32, noise=0.1)
    train, val = hold_out(splits.train, 0.25, seed=0)  # never the test split
    subset = torch.arange(64)  # a fixed training subset
    train_loader = ArrayLoader(train, batch_size=16, shuffle=True, mean=splits.mean, std=splits.std, seed=0,
                               indices=subset)
    val_loader = ArrayLoader(val, batch_size=64, shuffle=False, mean=splits.mean, std=splits.std)
    return train_loader, val_loader


def test_finetune_evaluator_is_deterministic(tiny_data) -> None:
    train_loader, val_loader = tiny_data
    model, space = small_model(), small_space()
    ev = FineTuneEvaluator(model, space, train_loader, val_loader, steps=6, lr=0.05)
    rng = torch.get_rng_state()
    a = ev(space.normalize([2, 3]))
    b = ev(space.normalize([2, 3]))
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched
    fresh = FineTuneEvaluator(small_model(), space, train_loader, val_loader, steps=6, lr=0.05)
    assert a == b == fresh(space.normalize([2, 3]))
    assert 0.0 <= a <= 1.0 and 0.0 <= ev.float_accuracy() <= 1.0
    assert ev.describe() == fresh.describe()
    assert ev.describe()["weights_sha256"] != FineTuneEvaluator(small_model(seed=1), space, train_loader,
                                                                val_loader).describe()["weights_sha256"]
    cached = CachedEvaluator(ev, space)
    assert cached([2, 3]) == a and cached([2, 3]) == a and cached.evaluations == 1


def test_finetune_evaluator_needs_a_float_model(tiny_data) -> None:
    model, space = small_model(), small_space()
    quantize_(model)
    with pytest.raises(ConfigError, match="float model"):
        FineTuneEvaluator(model, space, *tiny_data)
    with pytest.raises(ConfigError, match="steps"):
        FineTuneEvaluator(small_model(), space, *tiny_data, steps=-1)


def test_env_episode_with_the_fine_tune_evaluator(tiny_data) -> None:
    from lowbit.search import BitwidthEnv

    space = small_space()
    ev = CachedEvaluator(FineTuneEvaluator(small_model(), space, *tiny_data, steps=4), space)
    env = BitwidthEnv(space, ev, state="paper")
    env.reset(seed=0)
    env.step(space.encode(3))
    *_, terminated, _, info = env.step(space.encode(2))
    assert terminated and info["accuracy"] == ev([3, 2]) and ev.evaluations == 1
    assert env.acc_float == ev.float_accuracy() > 0
