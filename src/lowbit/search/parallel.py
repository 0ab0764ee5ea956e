"""Evaluating a bitwidth search's plans in worker processes, ReLeQ (Elthakeb et al.), METHODS.md
section 5: the fine-tune evaluations are the cost of a search, and they are independent of each
other, so a batch of them runs in a process pool.

:class:`ParallelEvaluator` is a :class:`CachedEvaluator` (same cache, same file, same counts) with
:meth:`~ParallelEvaluator.prefetch` / :meth:`~ParallelEvaluator.evaluate_many`: the plans of a
batch that are not cached are evaluated in a pool of ``workers`` processes and recorded in the
parent, in the batch's order (only the parent writes the cache file; the workers never touch it).

Workers: a ``spawn`` pool (no fork of a process holding torch threads), each with
``torch.set_num_threads(threads)`` (1 by default) and its own copy of the *worker evaluator*,
sent once per worker by pickling: for a :class:`FineTuneEvaluator` that is its float model (the
module with its weights; zoo models are importable classes), its data (the training loader cut to
its subset by :func:`compact_evaluator`, the validation batches) and its settings. The fine-tune
evaluator is deterministic per plan (it seeds torch and replays the loader's epochs), so a plan
gets the same accuracy in a worker as in the parent, **provided the thread counts match**: CPU
kernels may sum in another order with more threads. Compare a parallel search with a serial one
run at ``--threads 1``.

What each strategy does with the pool (and why the results stay what they were):

- **Random search** (and exhaustive search) draws plans ahead of the serial loop, from the same
  generator in the same order, until the look-ahead holds ``workers`` plans that are not cached
  (or as many as the evaluation budget has left, or until the serial loop would have stopped:
  ``max_draws``, every distinct plan seen); those are evaluated as one batch, then the serial
  loop runs over the drawn plans, now cache hits that are not counted as hits. Plans, order,
  accuracies, rewards, ``evaluations``, ``cache_hits`` and ``draws`` equal the serial search's;
  the budget stays exact (never more new evaluations than ``max_evals``). A time limit is
  checked before each batch rather than each evaluation, so it can overrun by one batch.
- **Greedy descent** stays serial: its next plan depends on the last accuracy. Evaluating all of a
  layer's lower bitwidths at once would pay for plans the serial descent never evaluates (after
  its first rejected step), changing its evaluation count and what a budget buys. With a
  ``ParallelEvaluator`` it evaluates one plan at a time in the parent process.
- **ReLeQ** runs ``n_envs = workers`` environments in lockstep (a stable-baselines3 vectorized
  env, ``lowbit.search.releq``): every episode is ``L`` steps long, so all environments finish
  their episodes on the same step, and their ``n_envs`` plans are evaluated as one batch before
  the environments step. A rollout still holds ``episodes_per_update`` episodes (each env plays
  ``episodes_per_update / n_envs`` of them, which must divide), all sampled from the same policy
  as in the serial agent, so it is the same PPO; the random actions are drawn in another order,
  so the search is reproducible for a given (seed, ``workers``) but not equal to the 1-worker
  search. Its budget is exact too (only the plans its gate would admit are evaluated).

A resumed search's time budget subtracts the evaluation times recorded in the cache
(``lowbit.search.budget``); with workers these overlap, so the subtraction is conservative.

Executor ``ray`` (``lowbit.executors``): the same batches run as Ray tasks instead of pool
processes, possibly on other machines: the same worker evaluator (pickled once, put in Ray's
object store once, unpickled once per Ray worker process), the same thread count per task, the
same function, so the same accuracies, recorded by the parent in the same order. A Ray worker that
dies mid-evaluation is rerun by Ray (the evaluation is deterministic), so the cache gets each plan
once. With ``workers == 1`` each plan still goes to the cluster, one at a time.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ConfigError, LowbitError
from lowbit.executors import RayTasks, Shared, check_executor
from lowbit.search.evaluator import CachedEvaluator, Evaluator
from lowbit.search.outcome import EvalRecord
from lowbit.search.space import ChoiceLike, Choices, SearchSpace

OnResult = Callable[[Choices, float], None]

_WORKER: dict[str, Any] = {}


def _init_worker(payload: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["evaluator"] = pickle.loads(payload)


def _evaluate_in_worker(choices: Choices) -> tuple[float, float]:
    return _evaluate(_WORKER["evaluator"], choices)


def _evaluate(evaluator: Evaluator, choices: Choices) -> tuple[float, float]:
    t0 = time.perf_counter()
    accuracy = evaluator(choices)
    return float(accuracy), time.perf_counter() - t0


def _evaluate_task(evaluator: Evaluator, item: tuple[int, Choices]) -> tuple[float, float]:
    """A Ray task (``lowbit.executors``): what a pool worker does, at the same thread count."""
    threads, choices = item
    torch.set_num_threads(threads)
    return _evaluate(evaluator, choices)


def compact_evaluator(evaluator: Evaluator) -> Evaluator:
    """A copy of ``evaluator`` that is cheaper to send to a worker: a training ``ArrayLoader``
    restricted to ``indices`` (the fine-tune evaluator's subset) keeps only those samples, in an
    order that serves the same batches. Other evaluators are returned as they are."""
    from lowbit.data import ArrayLoader
    from lowbit.data.types import TensorData
    from lowbit.search.finetune import FineTuneEvaluator

    if not isinstance(evaluator, FineTuneEvaluator) or not isinstance(evaluator.train, ArrayLoader) \
            or evaluator.train.indices is None:
        return evaluator
    loader = copy.copy(evaluator.train)
    indices = loader.indices
    assert indices is not None
    loader.data = TensorData(loader.data.x[indices].clone(), loader.data.y[indices].clone())
    loader.indices = torch.arange(len(indices))  # order(): indices[perm] -> perm: the same samples
    compact = copy.copy(evaluator)
    compact.train = loader
    return compact


class ParallelEvaluator(CachedEvaluator):
    """A :class:`CachedEvaluator` that evaluates batches of plans in ``workers`` processes (module
    docstring).

    ``inner`` serves the parent (float accuracy, ``describe()`` for the cache header, and the odd
    single plan requested outside a batch); ``worker_evaluator`` (default ``inner``) is pickled
    to each worker and must be picklable (a ``LoggedEvaluator`` holding a console is not: pass the
    evaluator it wraps). ``on_result(choices, accuracy)`` is called in the parent for each plan a
    worker evaluated, in batch order (progress lines; with ``workers == 1`` and the local executor the
    plans are evaluated by ``inner`` in the parent and it is not called). The pool starts on the first
    batch and ends with :meth:`close` (or the ``with`` block). ``executor="ray"`` runs the batches as
    Ray tasks (module docstring), on the cluster at ``ray_address`` or a private Ray instance of
    ``workers`` CPUs.
    """

    def __init__(self, inner: Evaluator, space: SearchSpace, cache_path: str | Path | None = None, *,
                 workers: int = 2, worker_evaluator: Evaluator | None = None, threads: int = 1,
                 on_result: OnResult | None = None, executor: str = "local",
                 ray_address: str | None = None) -> None:
        for name, value in (("workers", workers), ("threads", threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        check_executor(executor, ray_address)
        super().__init__(inner, space, cache_path)
        self.workers = workers
        self.threads = threads
        self.executor, self.ray_address = executor, ray_address
        self.worker_evaluator = inner if worker_evaluator is None else worker_evaluator
        self.on_result = on_result
        self.batches = 0  # batches sent to the pool
        self._pool: ProcessPoolExecutor | None = None
        self._ray: RayTasks | None = None
        self._shared: Shared | None = None  # the worker evaluator in Ray's object store
        self._unclaimed: set[str] = set()  # prefetched plans not requested yet

    @property
    def in_workers(self) -> bool:
        """Whether new plans are evaluated outside this process (a pool of workers, or Ray)."""
        return self.workers > 1 or self.executor == "ray"

    # ---- batches -----------------------------------------------------------------------------
    def evaluate(self, choices: Sequence[ChoiceLike]) -> EvalRecord:
        key = self.space.key(choices)
        if key in self._unclaimed:  # evaluated by prefetch for this request: neither a hit nor a second evaluation
            self._unclaimed.discard(key)
            return self._records[key]
        if self.executor == "ray" and self.lookup(choices) is None:  # a plan outside a batch: still on the cluster
            self.prefetch([choices])
            self._unclaimed.discard(key)
            return self._records[key]
        return super().evaluate(choices)

    def prefetch(self, plans: Sequence[Sequence[ChoiceLike]]) -> int:
        """Evaluate the plans of ``plans`` that are not cached (each once), in the pool when
        ``workers > 1``; the next :meth:`evaluate` of each is then served without counting a cache
        hit, so a prefetch followed by the serial requests counts exactly what the serial requests
        alone would. Returns the number of new evaluations."""
        misses: dict[str, Choices] = {}
        for plan in plans:
            choices = self.space.normalize(plan)
            key = self.space.key(choices)
            if key not in misses and self.lookup(choices) is None:
                misses[key] = choices
        if not misses:
            return 0
        results: Any
        if not self.in_workers:
            results = (self._timed(c) for c in misses.values())
        else:
            plans = list(misses.values())
            results = self._ray_map(plans) if self.executor == "ray" else self._pool_map(plans)
            self.batches += 1
        for (key, choices), (accuracy, wall_s) in zip(misses.items(), results):
            record = self._store(choices, accuracy, wall_s)
            self._unclaimed.add(key)
            if self.on_result is not None and self.in_workers:
                self.on_result(choices, record.accuracy)
        return len(misses)

    def evaluate_many(self, plans: Sequence[Sequence[ChoiceLike]]) -> list[EvalRecord]:
        """The records of ``plans``, in order: :meth:`prefetch` then one :meth:`evaluate` each (the
        same counts as evaluating them one by one)."""
        self.prefetch(plans)
        return [self.evaluate(plan) for plan in plans]

    def _timed(self, choices: Choices) -> tuple[object, float]:
        t0 = time.perf_counter()
        accuracy = self.inner(choices)
        return accuracy, time.perf_counter() - t0

    def _pool_map(self, plans: list[Choices]) -> Any:
        pool = self._start()
        try:
            yield from pool.map(_evaluate_in_worker, plans)
        except BrokenProcessPool as exc:
            self.close()
            raise LowbitError(f"a search worker process died ({exc}); rerun with --resume to continue from the "
                              "cache, with fewer --workers if memory ran out") from None

    def _ray_map(self, plans: list[Choices]) -> Any:
        if self._ray is None:
            self._ray = RayTasks(self.ray_address, num_cpus=self.workers * self.threads)
        if self._shared is None:
            self._shared = self._ray.share(self._payload())
        yield from self._ray.map(_evaluate_task, [(self.threads, c) for c in plans], shared=self._shared,
                                 num_cpus=self.threads, name=lambda i: f"plan {self.space.key(plans[i])}",
                                 hint="the plans evaluated before it are in the cache: rerun with --resume")

    def _payload(self) -> bytes:
        try:  # pickled once here, unpickled in each worker
            return pickle.dumps(compact_evaluator(self.worker_evaluator))
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            raise ConfigError(f"the evaluator cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                              "pass a picklable worker_evaluator") from None

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self._payload(), self.threads))
        return self._pool

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker processes, and Ray if this evaluator started it (a later batch starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            self._ray.close()
            self._ray, self._shared = None, None

    def __enter__(self) -> ParallelEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
