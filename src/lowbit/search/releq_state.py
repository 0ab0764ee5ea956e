"""A ReLeQ search's saved state (``lowbit.search.releq``): the agent's weights and optimizer, its step
count, the environments and every RNG, written after each PPO update and restored into a fresh
agent on resume (only stable-baselines3's public API: ``get_parameters`` / ``set_parameters``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.errors import CheckpointError
from lowbit.search.env import BitwidthEnv
from lowbit.train.checkpoint import load_checkpoint, save_checkpoint

STATE_FILE = "releq_state.ckpt"
STATE_KIND = "releq-search"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_state(state_path: Path | None, n_envs: int) -> dict[str, Any] | None:
    """The saved search state to resume (None: nothing saved yet, killed before the first update)."""
    if state_path is None or not state_path.exists():
        return None
    state = load_checkpoint(state_path)
    if state.get("kind") != STATE_KIND:
        raise CheckpointError(f"{state_path} is not a ReLeQ search state")
    if int(state.get("n_envs", 1)) != n_envs:
        raise CheckpointError(f"{state_path} was saved by a search with {state.get('n_envs', 1)} "
                              f"environment(s) (--workers); resume it with that number, not {n_envs}")
    return state


def restore(agent: Any, envs: list[BitwidthEnv], state: dict[str, Any], path: Path | None) -> None:
    """Load a saved state into a fresh agent and its environments (module docstring).

    The agent's last observation and episode starts are not restored (states written by older
    versions of this module carry them; they are ignored): every state is saved between two rollouts,
    where each environment has just reset, so the reset that the fresh agent's first ``learn``
    makes gives the same observation and all-True episode starts (the environment is deterministic
    and its ``np_random`` is reseeded with the same seed). A state saved inside an episode would
    break that, so it is refused."""
    try:
        agent.set_parameters({"policy": state["policy"], "policy.optimizer": state["optimizer"]}, exact_match=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this search's agent: {exc}") from None
    agent.num_timesteps = int(state["num_timesteps"])  # public counter; learn(reset_num_timesteps=False) adds to it
    for one, env_state in zip(envs, state["envs"] if len(envs) > 1 else [state["env"]]):
        one.set_state(env_state)
        if one.get_state()["index"] != 0:
            raise CheckpointError(f"{path} was saved in the middle of an episode; a ReLeQ state resumes only "
                                  "between two rollouts")
    set_rng_state(state["rng"])


def save(path: Path, agent: Any, envs: Sequence[BitwidthEnv], updates: int, progress: dict[str, Any]) -> None:
    """The search's state after ``updates`` PPO updates (``progress``: episodes, visited, preexisting, elapsed_s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = agent.get_parameters()
    save_checkpoint(path, {
        "kind": STATE_KIND, "policy": params["policy"], "optimizer": params["policy.optimizer"],
        "num_timesteps": int(agent.num_timesteps),
        "env": envs[0].get_state(), "n_envs": len(envs), "rng": rng_state(),
        **({"envs": [env.get_state() for env in envs]} if len(envs) > 1 else {}),
        "updates": updates, **progress,
    })
