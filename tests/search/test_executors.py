"""Tests of the executors: order, errors, dead workers, Ray and its guards."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.executors import (
    ProcessExecutor,
    SerialExecutor,
    check_ray_address,
    import_ray,
    make_executor,
)


def square_plus_shared(task, shared):
    if task == "raise":
        raise ValueError("bad task")
    return task * task + shared


def threads_of_worker(task, shared):
    import torch

    return torch.get_num_threads()


def die_once(task, marker_dir):
    """Kill the worker the first time task 1 runs; a marker file remembers that it did."""
    marker = os.path.join(marker_dir, f"died-{task}")
    if task == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return task * 10


def die_always(task, shared):
    if task == 1:
        os._exit(3)
    return task * 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serial_keeps_order_and_records_errors():
    with SerialExecutor(square_plus_shared, 1) as executor:
        outcomes = executor.map([3, "raise", 2])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[0].value == 10
    assert outcomes[2].value == 5
    assert outcomes[1].error == "ValueError: bad task"
    assert outcomes[1].attempts == 1


def test_serial_sets_thread_count():
    with SerialExecutor(threads_of_worker, None, threads=1) as executor:
        assert executor.map([0])[0].value == 1


def test_make_executor_picks_by_workers():
    assert isinstance(make_executor("local", square_plus_shared, 0, workers=1), SerialExecutor)
    executor = make_executor("local", square_plus_shared, 0, workers=2)
    assert isinstance(executor, ProcessExecutor)
    executor.close()


def test_make_executor_rejects_bad_options():
    with pytest.raises(SleepnasError, match="--executor"):
        make_executor("dask", square_plus_shared, 0)
    with pytest.raises(SleepnasError, match="--workers"):
        make_executor("local", square_plus_shared, 0, workers=0)
    with pytest.raises(SleepnasError, match="--ray-address needs --executor ray"):
        make_executor("local", square_plus_shared, 0, ray_address="127.0.0.1:1")


@pytest.mark.slow
def test_process_pool_matches_serial():
    tasks = [1, 2, "raise", 4]
    with SerialExecutor(square_plus_shared, 5) as serial:
        expected = serial.map(tasks)
    with ProcessExecutor(square_plus_shared, 5, workers=2) as pool:
        outcomes = pool.map(tasks)
        again = pool.map([6])
    assert outcomes == expected
    assert again[0].value == 41


@pytest.mark.slow
def test_process_pool_workers_use_fixed_threads():
    with ProcessExecutor(threads_of_worker, None, workers=2, threads=1) as pool:
        assert [o.value for o in pool.map([0, 1, 2])] == [1, 1, 1]


@pytest.mark.slow
def test_dead_worker_task_retried_once(tmp_path):
    with ProcessExecutor(die_once, str(tmp_path), workers=2) as pool:
        outcomes = pool.map([0, 1, 2])
    assert [o.ok for o in outcomes] == [True, True, True]
    assert [o.value for o in outcomes] == [0, 10, 20]
    assert outcomes[1].attempts == 2


@pytest.mark.slow
def test_dead_worker_twice_recorded_failed():
    with ProcessExecutor(die_always, None, workers=2) as pool:
        outcomes = pool.map([0, 1, 2])
        after = pool.map([3])
    assert outcomes[0].value == 0
    assert outcomes[2].value == 20
    assert not outcomes[1].ok
    assert outcomes[1].attempts == 2
    assert "worker process died twice" in outcomes[1].error
    assert after[0].value == 30


def test_ray_address_free_port_fails_fast():
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(SleepnasError, match=f"cannot reach the Ray cluster at --ray-address {address}"):
        check_ray_address(address, timeout_s=2.0)
    assert time.monotonic() - started < 10


def test_ray_address_malformed():
    with pytest.raises(SleepnasError, match="invalid --ray-address 'nohost'"):
        check_ray_address("nohost")


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'sleepnas\[ray\]'"):
        import_ray()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_unreachable_address_one_line():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'sleepnas[ray]')")
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(SleepnasError, match="cannot reach the Ray cluster") as info:
        make_executor("ray", square_plus_shared, 0, ray_address=address, connect_timeout_s=10)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_local_cluster_matches_serial():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'sleepnas[ray]')")
    tasks = [1, 2, "raise", 4]
    with SerialExecutor(square_plus_shared, 5) as serial:
        expected = serial.map(tasks)
    with make_executor("ray", square_plus_shared, 5, workers=2, connect_timeout_s=120) as executor:
        outcomes = executor.map(tasks)
    assert outcomes == expected
