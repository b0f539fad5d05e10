"""Where a sweep's backtests run: a pool of worker processes, or a Ray cluster. Both take picklable
jobs and a job function, run at most ``workers`` at a time, and report each job exactly once, a
crash included (`execute`). What a job is and how results are kept is `bot.lab.sweep`'s business."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

RAY_CONNECT_TIMEOUT_S = 30.0  # how long a Ray address may take to answer before the sweep gives up
WORKER_DIED = ("the worker process died while running it (a crash, or killed from outside, "
               "e.g. by the out-of-memory killer)")

J = TypeVar("J")
JobFn = Callable[[Any], dict[str, Any]]  # a job in, its backtest summary out (run in the worker)


class SweepError(Exception):
    """Bad input to a sweep: one line for the user, exit code 2."""


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the sweep (the parent) decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from bot.logs import setup_logging

    setup_logging("WARNING")


@dataclass
class Outcome:
    summary: dict[str, Any] | None = None
    error: str | None = None
    broken: bool = False  # the pool died under this job: it may or may not be the one to blame


class Backend(Protocol):
    name: str
    workers: int

    def submit(self, job: Any) -> Any: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def outcome(self, handle: Any) -> Outcome: ...
    def restart(self) -> None: ...
    def close(self, now: bool = False) -> None: ...


def _error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class ProcessBackend:
    """A pool of worker processes (spawned, so nothing of the parent's state is shared)."""

    name = "process"

    def __init__(self, workers: int, job_fn: JobFn) -> None:
        import multiprocessing

        self.workers = workers
        self._fn = job_fn
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx, initializer=_worker_init)

    def submit(self, job: Any) -> Future[dict[str, Any]]:
        return self._pool.submit(self._fn, job)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, handle: Any) -> Outcome:
        try:
            return Outcome(summary=handle.result())
        except BrokenProcessPool:
            return Outcome(broken=True)
        except Exception as e:
            return Outcome(error=_error_text(e))

    def restart(self) -> None:
        self.close(now=True)
        self._pool = self._new()

    def close(self, now: bool = False) -> None:
        if now:
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.terminate()  # a worker mid-backtest would otherwise run to the end of it
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ray_probe(address: str) -> None:
    """Connect to ``address`` in a child process first: `ray.init` on an address where nothing
    answers retries for minutes, and a child can be stopped after `RAY_CONNECT_TIMEOUT_S`."""
    if address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(5.0, RAY_CONNECT_TIMEOUT_S)):
                pass
        except ValueError:
            raise SweepError(f"--ray {address}: not an address (auto, local, HOST:PORT or ray://HOST:PORT)") from None
        except OSError as e:
            raise SweepError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})") from None
    code = ("import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print('ok')")
    try:
        proc = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                              timeout=RAY_CONNECT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SweepError(f"--ray {address}: no Ray cluster answered within {RAY_CONNECT_TIMEOUT_S:g} s") from None
    if proc.returncode != 0 or "ok" not in proc.stdout:
        raise SweepError(f"--ray {address}: cannot join a Ray cluster: {_probe_error(proc.stderr, proc.returncode)}")


def _probe_error(stderr: str, returncode: int) -> str:
    """The probe's exception, with the one just before it in the traceback (its cause: Ray's
    ConnectionError hides an AuthenticationError, for one), each cut to a readable length."""
    errors = [ln.strip() for ln in stderr.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b[^:]*:", ln.strip())]
    if not errors:
        return f"exit code {returncode}"

    def cut(text: str) -> str:
        return text if len(text) <= 200 else text[:199] + "…"

    last = cut(errors[-1])
    return last if len(errors) == 1 else f"{last} (cause: {cut(errors[-2])})"


class RayBackend:
    """The same jobs as Ray tasks (one CPU each): Ray places them; a crash fails only its task."""

    name = "ray"

    def __init__(self, address: str, workers: int | None, job_fn: JobFn) -> None:
        import importlib

        try:  # an optional extra, typed as Any here so the core never depends on its stubs
            ray: Any = importlib.import_module("ray")
        except ImportError:
            raise SweepError("--ray needs Ray, an optional extra: pip install 'qqq-leaps-bot[ray]'") from None
        self._ray = ray
        if address == "local":  # always a new in-process instance, even beside a running cluster
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                     logging_level="WARNING")
        else:
            _ray_probe(address)
            ray.init(address=address, logging_level="WARNING")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers, cpus) if workers else cpus
        self._remote = ray.remote(num_cpus=1, max_retries=0)(job_fn)
        self._submitted: set[Any] = set()

    def submit(self, job: Any) -> Any:
        ref = self._remote.remote(job)
        self._submitted.add(ref)
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        return list(ready)

    def outcome(self, handle: Any) -> Outcome:
        exc = self._ray.exceptions
        self._submitted.discard(handle)
        try:
            return Outcome(summary=self._ray.get(handle))
        except exc.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            return Outcome(error=_error_text(cause))
        except (exc.WorkerCrashedError, exc.NodeDiedError, exc.OutOfMemoryError):
            return Outcome(error=WORKER_DIED)
        except exc.RayError as e:
            return Outcome(error=_error_text(e))

    def restart(self) -> None:  # a Ray task never breaks the others
        pass

    def close(self, now: bool = False) -> None:
        if now:  # on a cluster that outlives the sweep, running tasks would otherwise go on
            for ref in self._submitted:
                self._ray.cancel(ref, force=True)
        self._ray.shutdown()


def execute(jobs: list[J], backend: Backend, on_done: Callable[[J, Outcome], None],
            on_idle: Callable[[], None] = lambda: None) -> None:
    """Run every job, at most ``backend.workers`` at a time; report each exactly once.

    When a worker process dies, the pool fails every job it held. Those jobs are then rerun one at
    a time, so only the one that kills its worker again is reported as failed."""
    pending = deque(jobs)
    suspects: deque[J] = deque()
    inflight: dict[Any, J] = {}
    alone = False
    while pending or suspects or inflight:
        if not inflight:
            alone = bool(suspects)
        source, limit = (suspects, 1) if alone else (pending, backend.workers)
        while source and len(inflight) < limit:
            job = source.popleft()
            inflight[backend.submit(job)] = job
        done = backend.wait(list(inflight), timeout=0.5)
        on_idle()
        broken = False
        for handle in done:
            out = backend.outcome(handle)
            if out.broken:
                broken = True
            else:
                on_done(inflight.pop(handle), out)
        if broken:
            lost = []
            for handle, job in inflight.items():
                out = backend.outcome(handle) if handle.done() else Outcome(broken=True)
                if out.broken:
                    lost.append(job)
                else:
                    on_done(job, out)
            inflight.clear()
            backend.restart()
            if alone:
                for job in lost:
                    on_done(job, Outcome(error=WORKER_DIED))
            else:
                suspects.extend(lost)
