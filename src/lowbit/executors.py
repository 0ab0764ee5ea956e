"""Where a batch of independent, deterministic tasks runs: ``local`` (this machine, the caller's
process pool, as before) or ``ray`` (tasks on a Ray cluster, https://docs.ray.io). Used for the
search's plan evaluations (``lowbit.search.parallel``) and DCQ's sections
(``lowbit.distill.section_training``); the tasks are the same functions the local pools run.

Ray is an optional extra (``pip install 'lowbit[ray]'``) imported only when the ray executor is
chosen. :class:`RayTasks` uses Ray's public API only (``ray.init``, ``ray.remote`` with
``max_retries``, ``ray.put``, ``ray.get``, ``ray.shutdown``):

- Connection: a Ray already initialised in this process (a test's, a notebook's) is used as it
  is; otherwise ``address`` None starts a private Ray instance on this machine with ``num_cpus``
  CPUs, ``"auto"`` joins the cluster started by ``ray start`` on this machine and ``HOST:PORT``
  joins that cluster. :meth:`RayTasks.close` shuts Ray down only when this object started it.
- One writer: a task returns its result to the driver (this process), which alone records it
  (the search's cache file); tasks never write files.
- Faults: a task whose worker process dies (killed, out of memory, its machine lost) is rerun by
  Ray, up to ``max_retries`` times. The tasks are deterministic, so the rerun returns what the
  first try would have, and the driver receives exactly one result per task: nothing lost,
  nothing twice. A task that raises (a bug, a bad setting) is not retried; its exception is
  raised in the driver. Past the retries a ``LowbitError`` names the task.
- Shared state: :meth:`RayTasks.share` puts bytes (e.g. the pickled evaluator) in the object
  store once; each worker process unpickles them once (the first task that needs them), not once
  per task.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lowbit.errors import ConfigError, LowbitError, unknown_name

EXECUTORS = ("local", "ray")
RAY_EXTRA = "pip install 'lowbit[ray]'"
MAX_RETRIES = 3  # reruns of a task whose worker process died (Ray's default, said here)

Shared = tuple[str, list[Any]]  # (token, [object ref]): the ref sits in a list so Ray does not resolve it per task

_SHARED: dict[str, Any] = {}  # in a Ray worker process: the unpickled shared state of the current token


def import_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


def check_executor(executor: str, address: str | None) -> None:
    """A known executor; ``address`` only with ``ray``; Ray importable when it is chosen."""
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, EXECUTORS)
    if address is not None and executor != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    if address is not None and not str(address).strip():
        raise ConfigError("--ray-address must be HOST:PORT or auto, got an empty string")
    if executor == "ray":
        import_ray()


def _run(fn: Callable[..., Any], token: str | None, holder: list[Any] | None, item: Any) -> Any:
    """A Ray task: ``fn(item)``, or ``fn(shared, item)`` with the shared state unpickled once per process."""
    if token is None:
        return fn(item)
    if token not in _SHARED:
        import ray

        _SHARED.clear()  # one driver's state at a time per worker process
        _SHARED[token] = pickle.loads(ray.get(holder[0]))  # type: ignore[index]
    return fn(_SHARED[token], item)


class RayTasks:
    """Run a function over items as Ray tasks, results back in the driver in order (module doc)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES) -> None:
        self.ray = import_ray()
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self.started = False  # True when this object called ray.init (and close shuts Ray down)
        self._remote: Any = None

    def connect(self) -> None:
        """Join (or start) Ray as the module doc says; a second call does nothing."""
        ray = self.ray
        if not ray.is_initialized():
            quiet = {"include_dashboard": False, "log_to_driver": False}
            try:
                if self.address is None:
                    ray.init(address="local", num_cpus=self.num_cpus, **quiet)
                else:
                    ray.init(address=self.address, **quiet)
            except ConnectionError as exc:
                raise ConfigError(f"cannot join the Ray cluster at {self.address!r}: {exc}. Is it up (ray status)? "
                                  "If `ray start` said token authentication is enabled, run with RAY_AUTH_MODE=token "
                                  "and the head's token (ray get-auth-token; RAY_AUTH_TOKEN)") from None
            self.started = True
        if self._remote is None:
            self._remote = ray.remote(_run)

    def share(self, payload: bytes) -> Shared:
        """Put ``payload`` (pickled state every task of a :meth:`map` reads) in the object store once."""
        self.connect()
        return uuid.uuid4().hex, [self.ray.put(payload)]

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Shared | None = None,
            num_cpus: float = 1, name: Callable[[int], str] = lambda i: f"task {i + 1}",
            hint: str = "run it again") -> Iterator[Any]:
        """``fn(item)`` (or ``fn(shared state, item)``) for every item, all submitted at once; yields the
        results in ``items``' order, each as soon as it and those before it are back. ``fn`` must be
        importable (a module-level function of an installed package) on every machine. ``name(i)``
        and ``hint`` word the error of a task that failed past its retries."""
        self.connect()
        ray = self.ray
        token, holder = shared if shared is not None else (None, None)
        task = self._remote.options(num_cpus=num_cpus, max_retries=self.max_retries, retry_exceptions=False)
        refs = [task.remote(fn, token, holder, item) for item in items]
        # After an error the other tasks are left to finish and their results dropped (they write
        # nothing); a private instance ends with close(). Not ray.cancel: in Ray 2.60 a cancel racing
        # a task's completion aborted the driver ("Tried to complete task that was not pending").
        for i, ref in enumerate(refs):
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the task raised: its own exception, not retried
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else exc) from None
            except ray.exceptions.RayError as exc:  # worker or machine lost, past the retries
                raise LowbitError(f"{name(i)} failed on Ray after {self.max_retries} retries "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  f"{hint}") from None
            yield result

    def close(self) -> None:
        """Shut Ray down if :meth:`connect` started it (a Ray the caller started stays up)."""
        if self.started:
            self.ray.shutdown()
            self.started = False
        self._remote = None
