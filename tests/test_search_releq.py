"""ReLeQ's PPO agent (METHODS.md section 5): finds a known optimum, is deterministic per seed,
respects the budget, and an interrupted search resumes to the same end as an uninterrupted one."""

from __future__ import annotations

import pytest

from lowbit.errors import ConfigError
from lowbit.search import Budget, CachedEvaluator, SearchSpace, SyntheticEvaluator
from lowbit.search.releq import PPOSettings, releq_search
from search_support import DiesAtCall, Killed, small_model


def _space() -> SearchSpace:
    return SearchSpace.from_model(small_model(), pin_first_last=False)  # 4 layers x 5 choices = 625 plans


def _synthetic(space: SearchSpace, noise: float = 0.002) -> SyntheticEvaluator:
    return SyntheticEvaluator(space, sensitive={"2": 4, "5": 3}, drop=0.3, slope=0.01, noise=noise)


def _evaluator(space: SearchSpace, path=None) -> CachedEvaluator:
    return CachedEvaluator(_synthetic(space), space, cache_path=path)


def _trace(outcome) -> tuple:
    s = outcome.settings
    return (s["episode_plans"], s["episode_rewards"], outcome.evaluations, outcome.cache_hits,
            [r.key for r in outcome.records], s["updates"])


@pytest.mark.slow
def test_ppo_finds_the_known_optimum() -> None:
    space = _space()
    synthetic = _synthetic(space, noise=0.0)
    optimum = space.key(synthetic.optimum())
    outcome = releq_search(space, CachedEvaluator(synthetic, space), Budget(max_evals=200), seed=0, max_episodes=400, state="paper")
    assert outcome.best.key == optimum
    assert outcome.evaluations <= 200 and outcome.settings["episodes"] == 400


def test_same_seed_same_search_and_another_seed_differs() -> None:
    space = _space()
    runs = [releq_search(space, _evaluator(space), Budget(max_evals=40), seed=s, max_episodes=48, state="paper") for s in (3, 3, 4)]
    assert _trace(runs[0]) == _trace(runs[1])
    assert runs[0].settings["episode_plans"] != runs[2].settings["episode_plans"]


def test_budget_counts_distinct_plans() -> None:
    space = _space()
    outcome = releq_search(space, _evaluator(space), Budget(max_evals=10), seed=0, max_episodes=500, state="paper")
    assert outcome.settings["stopped"] == "budget"
    assert len(outcome.records) == 10 and outcome.evaluations == 10
    assert outcome.cache_hits == outcome.settings["episodes"] - 10


@pytest.mark.parametrize("policy", ["mlp", "lstm"])
def test_interrupted_search_resumes_to_the_same_end(tmp_path, policy: str) -> None:
    space = _space()
    ppo = PPOSettings(policy=policy, episodes_per_update=4, n_epochs=3)
    kw = dict(seed=1, ppo=ppo, max_episodes=40)
    whole = releq_search(space, _evaluator(space, tmp_path / "a.jsonl"), Budget(max_evals=30),
                         state_dir=tmp_path / "a", **kw, state="paper")
    first = releq_search(space, _evaluator(space, tmp_path / "b.jsonl"), Budget(max_evals=30),
                         state_dir=tmp_path / "b", stop_after_updates=4, **kw, state="paper")
    assert first.settings["stopped"] == "interrupted"
    resumed = releq_search(space, _evaluator(space, tmp_path / "b.jsonl"), Budget(max_evals=30),
                           state_dir=tmp_path / "b", resume=True, **kw, state="paper")
    assert _trace(resumed) == _trace(whole)


def test_kill_in_the_middle_of_a_rollout_resumes_to_the_same_end(tmp_path) -> None:
    space = _space()
    kw = dict(seed=2, ppo=PPOSettings(episodes_per_update=4, n_epochs=2), max_episodes=32)
    whole = releq_search(space, _evaluator(space, tmp_path / "a.jsonl"), Budget(max_evals=25),
                         state_dir=tmp_path / "a", **kw, state="paper")
    # new plans only reach the inner evaluator: kill at the 9th new plan, whatever episode that is
    evaluator = CachedEvaluator(DiesAtCall(_synthetic(space), 9), space, cache_path=tmp_path / "b.jsonl")
    with pytest.raises(Killed):
        releq_search(space, evaluator, Budget(max_evals=25), state_dir=tmp_path / "b", **kw, state="paper")
    resumed = releq_search(space, _evaluator(space, tmp_path / "b.jsonl"), Budget(max_evals=25),
                           state_dir=tmp_path / "b", resume=True, **kw, state="paper")
    assert _trace(resumed) == _trace(whole)


def test_resume_without_a_saved_state_starts_afresh(tmp_path) -> None:
    space = _space()
    kw = dict(seed=0, max_episodes=16, ppo=PPOSettings(episodes_per_update=4, n_epochs=1))
    fresh = releq_search(space, _evaluator(space), Budget(max_evals=20), **kw, state="paper")
    resumed = releq_search(space, _evaluator(space), Budget(max_evals=20), state_dir=tmp_path / "none",
                           resume=True, **kw, state="paper")
    assert _trace(fresh) == _trace(resumed)


@pytest.mark.parametrize("bad", [dict(policy="gru"), dict(n_epochs=0), dict(learning_rate=0.0), dict(gamma=1.5)])
def test_bad_ppo_settings(bad: dict) -> None:
    with pytest.raises(ConfigError):
        PPOSettings(**bad)


def test_a_limit_is_required() -> None:
    space = _space()
    with pytest.raises(ConfigError, match="limit"):
        releq_search(space, _evaluator(space), Budget(), state="paper")


def test_on_episode_sees_every_episode_in_order() -> None:
    space = _space()
    seen: list[dict] = []
    outcome = releq_search(space, _evaluator(space), Budget(max_evals=10), seed=0, max_episodes=16,
                           on_episode=seen.append, state="paper")
    assert [e["plan_key"] for e in seen] == outcome.settings["episode_plans"]
    assert [e["reward"] for e in seen] == outcome.settings["episode_rewards"]


def test_a_search_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch) -> None:
    """SB3's default logger (``configure()`` with no folder) made an empty tempdir/SB3-<date>
    folder at every ``learn``; the agent's logger writes nowhere. A private temp dir, so that
    other processes' folders cannot interfere."""
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    assert tempfile.gettempdir() == str(temp)
    space = _space()
    for policy in ("mlp", "lstm"):
        outcome = releq_search(space, _evaluator(space), Budget(max_evals=12), seed=0, state_dir=tmp_path / policy,
                               ppo=PPOSettings(policy=policy, episodes_per_update=4, n_epochs=1), state="paper")
        assert outcome.settings["updates"] >= 2  # several learn() calls
        assert sorted(p.name for p in (tmp_path / policy).iterdir()) == ["releq_state.ckpt"]
    assert [p.name for p in temp.iterdir() if p.name.startswith("SB3-")] == []


def test_a_state_saved_inside_an_episode_is_refused(tmp_path) -> None:
    from lowbit.errors import CheckpointError
    from lowbit.search.releq import STATE_FILE
    from lowbit.train.checkpoint import load_checkpoint, save_checkpoint

    space = _space()
    kw = dict(seed=0, max_episodes=16, ppo=PPOSettings(episodes_per_update=4, n_epochs=1))
    releq_search(space, _evaluator(space), Budget(max_evals=20), state_dir=tmp_path, stop_after_updates=1, **kw, state="paper")
    state = load_checkpoint(tmp_path / STATE_FILE)
    first = space.decode(0)
    state["env"] = {**state["env"], "index": 1, "chosen": [list(first)]}
    save_checkpoint(tmp_path / STATE_FILE, state)
    with pytest.raises(CheckpointError, match="middle of an episode"):
        releq_search(space, _evaluator(space), Budget(max_evals=20), state_dir=tmp_path, resume=True, **kw, state="paper")


def test_no_private_stable_baselines3_attributes() -> None:
    """releq.py uses SB3's public API only: the one private attribute it touches is its own."""
    import ast
    import inspect

    import lowbit.search.releq as releq

    tree = ast.parse(inspect.getsource(releq))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and node.attr.startswith("_") and not node.attr.startswith("__")}
    own = {name for name, item in vars(releq._Gate).items() if inspect.isfunction(item)}
    assert used <= own, f"private attributes of other objects: {sorted(used - own)}"
