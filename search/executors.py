"""Executors that evaluate independent tasks (RL children) in order, serially or in parallel.

An executor runs ``function(task, shared)`` for each task of a batch and returns one
`TaskOutcome` per task, in the order of the tasks. ``shared`` (the training data) is
sent to each worker once. Each worker uses a fixed number of torch threads, so that a
task gives the same result whichever worker runs it.

- `SerialExecutor`: in this process.
- `ProcessExecutor`: a pool of worker processes on this machine (``spawn`` start method).
- `RayExecutor`: tasks on a Ray cluster (optional dependency ``sleepnas[ray]``).

A task whose function raises is recorded as failed with the error and is not retried,
since it would fail again. A task whose worker process dies is retried once, alone in a
fresh worker, then recorded as failed with the reason.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sleepnas.runtime.errors import SleepnasError, check_option, check_positive

logger = logging.getLogger(__name__)

#: Executor names: ``local`` is serial with one worker and a process pool with more.
EXECUTORS: tuple[str, ...] = ("local", "ray")

#: Seconds to wait for the TCP connection to a Ray cluster's address before giving up.
RAY_CONNECT_TIMEOUT_S = 10.0

TaskFunction = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class TaskOutcome:
    """Outcome of one task.

    Attributes
    ----------
    ok : bool
        The function returned.
    value : Any
        Its return value (None when not ok).
    error : str or None
        Why the task failed: the exception, or the death of its worker.
    attempts : int
        Runs of the task (2 when a dead worker made it run again).
    """

    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int = 1


def _error_text(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _call(function: TaskFunction, task: Any, shared: Any, threads: int) -> tuple[bool, Any]:
    """Run ``function`` on ``threads`` torch threads; return ``(True, value)`` or ``(False, error)``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return True, function(task, shared)
    except Exception as err:  # noqa: BLE001 - the error is the task's outcome, reported by the caller
        logger.debug("task failed", exc_info=True)
        return False, _error_text(err)
    finally:
        torch.set_num_threads(previous)


class Executor:
    """Base of the executors; use as a context manager or call `close`."""

    name = ""

    def __init__(self, function: TaskFunction, shared: Any, *, threads: int = 1) -> None:
        check_positive("--threads-per-worker", threads)
        self.function = function
        self.shared = shared
        self.threads = int(threads)

    def map(self, tasks: Sequence[Any]) -> list[TaskOutcome]:
        """Run every task; return their outcomes in the order of ``tasks``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs the tasks one after another in this process."""

    name = "serial"

    def map(self, tasks: Sequence[Any]) -> list[TaskOutcome]:
        outcomes = []
        for task in tasks:
            ok, value = _call(self.function, task, self.shared, self.threads)
            outcomes.append(TaskOutcome(True, value) if ok else TaskOutcome(False, error=value))
        return outcomes


# State of a worker process of `ProcessExecutor`, set once by its initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(function: TaskFunction, shared: Any, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(function=function, shared=shared, threads=threads)


def _run_in_worker(task: Any) -> tuple[bool, Any]:
    return _call(_WORKER["function"], task, _WORKER["shared"], _WORKER["threads"])


class ProcessExecutor(Executor):
    """Runs the tasks in a pool of ``workers`` processes on this machine.

    ``function`` and ``shared`` must be picklable (a module-level function, plain data).
    A batch runs in parallel. The tasks whose worker died then run again one at a time,
    each in a fresh worker, so that a task that kills its worker cannot make the others
    fail twice.
    """

    name = "process"

    def __init__(self, function: TaskFunction, shared: Any, *, workers: int = 2, threads: int = 1) -> None:
        super().__init__(function, shared, threads=threads)
        check_positive("--workers", workers)
        self.workers = int(workers)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _new_pool(self, workers: int) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self.function, self.shared, self.threads))

    def _pool_or_new(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
        return self._pool

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, tasks: Sequence[Any]) -> list[TaskOutcome]:
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        pool = self._pool_or_new()
        futures = [pool.submit(_run_in_worker, task) for task in tasks]
        died: list[int] = []
        for i, future in enumerate(futures):
            try:
                ok, value = future.result()
            except BrokenProcessPool:
                died.append(i)
                continue
            outcomes[i] = TaskOutcome(True, value) if ok else TaskOutcome(False, error=value)
        if died:
            logger.warning("a worker process died: retrying %d task(s) one at a time", len(died))
            self._discard_pool()
        for i in died:
            outcomes[i] = self._retry(tasks[i])
        return [outcome for outcome in outcomes if outcome is not None]

    def _retry(self, task: Any) -> TaskOutcome:
        pool = self._new_pool(1)
        try:
            ok, value = pool.submit(_run_in_worker, task).result()
        except BrokenProcessPool as err:
            reason = f"the worker process died twice ({_error_text(err)})"
            logger.warning("task failed: %s", reason)
            return TaskOutcome(False, error=reason, attempts=2)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return TaskOutcome(True, value, attempts=2) if ok else TaskOutcome(False, error=value, attempts=2)

    def close(self) -> None:
        self._discard_pool()


def import_ray() -> Any:
    """Import and return the ``ray`` module, or raise an `ImportError` naming the extra to install."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("--executor ray needs Ray: pip install 'sleepnas[ray]'") from err
    return ray


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Raise a `SleepnasError` unless a TCP connection to the ``host:port`` of ``address`` opens.

    ``address`` is ``host:port`` or ``ray://host:port`` (Ray Client). ``auto`` and
    ``local`` are not checked, because Ray resolves them itself.
    """
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise SleepnasError(f"invalid --ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT "
                            "or auto")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise SleepnasError(f"cannot reach the Ray cluster at --ray-address {address}: {_error_text(err)}; "
                            "start it with `ray start --head` or give the address it prints") from None


def _ray_call(function: TaskFunction, task: Any, shared: Any, threads: int) -> tuple[bool, Any]:
    return _call(function, task, shared, threads)


class RayExecutor(Executor):
    """Runs the tasks as Ray tasks, each reserving ``threads`` CPUs.

    Parameters
    ----------
    address : str or None
        Address of a running cluster; ``None`` starts a single-node cluster here with
        ``workers * threads`` CPUs (or uses the one this process already joined).
    workers : int
        CPUs of a cluster started here, in workers of ``threads`` CPUs.
    connect_timeout_s : float
        Time limit of the TCP check of ``address`` (see `check_ray_address`).

    A task whose worker dies is retried once by Ray (``max_retries=1``), then recorded
    as failed. ``shared`` is put in the object store once.
    """

    name = "ray"

    def __init__(self, function: TaskFunction, shared: Any, *, address: str | None = None, workers: int = 2,
                 threads: int = 1, connect_timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
        super().__init__(function, shared, threads=threads)
        check_positive("--workers", workers)
        ray = import_ray()
        self._ray = ray
        self._owns_connection = False
        if not ray.is_initialized():
            if address is not None:
                check_ray_address(address, timeout_s=connect_timeout_s)
            self._connect(address, workers * self.threads)
            self._owns_connection = True
        self._shared_ref = ray.put(shared)
        self._remote = ray.remote(max_retries=1, num_cpus=self.threads)(_ray_call)

    def _connect(self, address: str | None, num_cpus: int) -> None:
        ray = self._ray
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING}
        if address is None:
            # A cluster started here listens on the loopback interface only.
            kwargs.update(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        else:
            kwargs["address"] = address
        where = "a local Ray cluster" if address is None else f"the Ray cluster at --ray-address {address}"

        # ray.init hangs when called outside the main thread (Ray 2.60), so it runs here.
        # The TCP check before it bounds the wait on an address where nothing listens.
        # NOTE: a host that accepts TCP connections but runs no Ray cluster is left to
        # Ray's own connection timeouts.
        started = time.monotonic()
        try:
            ray.init(**kwargs)
        except Exception as err:  # noqa: BLE001 - Ray raises several types; one line for all
            raise SleepnasError(f"cannot connect to {where}: {_error_text(err)}") from None
        logger.info("connected to %s in %.1f s", where, time.monotonic() - started)

    def map(self, tasks: Sequence[Any]) -> list[TaskOutcome]:
        ray = self._ray
        refs = [self._remote.remote(self.function, task, self._shared_ref, self.threads) for task in tasks]
        outcomes = []
        for ref in refs:
            try:
                ok, value = ray.get(ref)
            except ray.exceptions.RayError as err:
                reason = f"the Ray worker failed after a retry ({_error_text(err)})"
                logger.warning("task failed: %s", reason)
                outcomes.append(TaskOutcome(False, error=reason, attempts=2))
                continue
            outcomes.append(TaskOutcome(True, value) if ok else TaskOutcome(False, error=value))
        return outcomes

    def close(self) -> None:
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_connection = False


def make_executor(executor: str, function: TaskFunction, shared: Any, *, workers: int = 1, threads: int = 1,
                  ray_address: str | None = None,
                  connect_timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> Executor:
    """Return the executor ``executor`` (one of `EXECUTORS`) for ``function`` and ``shared``."""
    check_option("--executor", executor, EXECUTORS)
    check_positive("--workers", workers)
    if executor == "ray":
        return RayExecutor(function, shared, address=ray_address, workers=workers, threads=threads,
                           connect_timeout_s=connect_timeout_s)
    if ray_address is not None:
        raise SleepnasError("--ray-address needs --executor ray")
    if workers == 1:
        return SerialExecutor(function, shared, threads=threads)
    return ProcessExecutor(function, shared, workers=workers, threads=threads)
