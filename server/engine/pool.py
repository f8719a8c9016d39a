"""The worker pool: spawns one process per device slot, routes requests, relays events.

Each worker has two one-way pipes: commands in, event batches out. A reader thread per
worker waits on its event pipe and its process sentinel together, so a worker that dies
(kill -9, out of memory) is seen at once: its in-flight requests get an error event, and
it is restarted with the same slot. Sessions keep their worker (affinity), so a session's
next request finds its cache there, or, after a restart, rebuilds it from the history the
request carries.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from server.engine.protocol import WORKER_DIED, Event, WorkRequest
from server.engine.settings import EngineSettings
from server.engine.worker import worker_main

Deliver = Callable[[dict[str, list[Event]]], None]


class Overloaded(Exception):
    """Every worker that could take the request has a full queue."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(Exception):
    """No live worker serves the model right now (starting, restarting, or stopped)."""


@dataclass
class Worker:
    index: int
    device: str
    process: Any = None
    commands: Connection | None = None
    events: Connection | None = None
    models: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    inflight: set[str] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=dict)
    alive: bool = False
    restarts: int = 0
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerPool:
    def __init__(self, settings: EngineSettings, deliver: Deliver) -> None:
        self.settings = settings
        self.deliver = deliver
        self.workers = [Worker(i, d) for i, d in enumerate(settings.slots())]
        self.affinity: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._context = mp.get_context("spawn")

    # Life cycle.
    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        for worker in self.workers:
            self._await_ready(worker)
            thread = threading.Thread(
                target=self._read,
                args=(worker,),
                name=f"kvserve-worker-{worker.index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        for worker in self.workers:
            with contextlib.suppress(OSError, AttributeError):
                self._send(worker, ("stop",))
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(timeout_s)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(timeout_s)
            worker.alive = False
        for thread in self._threads:
            thread.join(timeout_s)

    @property
    def ready(self) -> bool:
        return not self._stopping and all(w.alive for w in self.workers)

    def load_errors(self) -> dict[str, str]:
        """Errors by model name of models that failed to load on any worker."""
        errors: dict[str, str] = {}
        for worker in self.workers:
            errors.update(worker.errors)
        return errors

    # Requests.
    def submit(self, req: WorkRequest) -> int:
        """Hand a request to a worker; returns the worker's index."""
        with self._lock:
            worker = self._choose(req)
            limit = self.settings.scheduler.max_running + self.settings.max_waiting
            if len(worker.inflight) >= limit:
                raise Overloaded(
                    f"the server is at capacity ({len(worker.inflight)} requests in flight "
                    f"on worker {worker.index}); retry after {self.settings.retry_after_s:g} s",
                    self.settings.retry_after_s,
                )
            worker.inflight.add(req.id)
        try:
            self._send(worker, ("submit", req))
        except OSError as exc:
            with self._lock:
                worker.inflight.discard(req.id)
            raise Unavailable(f"worker {worker.index} is restarting; retry shortly") from exc
        return worker.index

    def cancel(self, request_id: str) -> None:
        for worker in self.workers:
            if request_id in worker.inflight:
                with contextlib.suppress(OSError):
                    self._send(worker, ("cancel", request_id))

    def drop_session(self, session_id: str) -> None:
        index = self.affinity.pop(session_id, None)
        if index is not None:
            with contextlib.suppress(OSError):
                self._send(self.workers[index], ("drop_session", session_id))

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": w.index,
                "device": w.device,
                "alive": w.alive,
                "pid": w.process.pid if w.process else None,
                "restarts": w.restarts,
                "inflight": len(w.inflight),
                **w.stats,
            }
            for w in self.workers
        ]

    def _choose(self, req: WorkRequest) -> Worker:
        if req.session_id is not None and req.session_id in self.affinity:
            worker = self.workers[self.affinity[req.session_id]]
            if not worker.alive:
                raise Unavailable(f"worker {worker.index} is restarting; retry shortly")
            return worker
        models = [m for m in (req.model, req.draft_model) if m]
        able = [w for w in self.workers if w.alive and all(m in w.models for m in models)]
        if not able:
            raise Unavailable(f"no live worker serves {' + '.join(models)} right now")
        worker = min(able, key=lambda w: len(w.inflight))
        if req.session_id is not None:
            self.affinity[req.session_id] = worker.index
        return worker

    def _send(self, worker: Worker, command: tuple[Any, ...]) -> None:
        if worker.commands is None:
            raise OSError("worker not started")
        with worker.send_lock:
            worker.commands.send(command)

    # Processes.
    def _spawn(self, worker: Worker) -> None:
        cmd_read, cmd_write = self._context.Pipe(duplex=False)
        evt_read, evt_write = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(worker.index, worker.device, self.settings, cmd_read, evt_write),
            name=f"kvserve-worker-{worker.index}",
            daemon=True,
        )
        env = {"OMP_WAIT_POLICY": self.settings.omp_wait_policy}
        if worker.device == "cpu":
            env["OMP_NUM_THREADS"] = str(self.settings.threads(worker.device))
        with temporary_environ(env):
            process.start()
        cmd_read.close()  # the child holds these ends; closing ours makes EOF visible
        evt_write.close()
        worker.process, worker.commands, worker.events = process, cmd_write, evt_read

    def _await_ready(self, worker: Worker) -> None:
        assert worker.events is not None
        deadline = time.monotonic() + self.settings.worker_start_timeout_s
        while time.monotonic() < deadline:
            ready = wait([worker.events, worker.process.sentinel], timeout=0.5)
            if worker.events in ready:
                try:
                    batch = worker.events.recv()
                except (EOFError, OSError):
                    break
                for event in batch:
                    if event[0] == "ready":
                        worker.models, worker.errors = event[1], event[2]
                        worker.alive = bool(worker.models)
                        if not worker.alive:
                            raise RuntimeError(
                                f"worker {worker.index} loaded no model: {worker.errors}"
                            )
                        return
            elif ready:
                break
        raise RuntimeError(
            f"worker {worker.index} ({worker.device}) did not start "
            f"(exit code {worker.process.exitcode}); see its log above"
        )

    def _read(self, worker: Worker) -> None:
        while not self._stopping:
            assert worker.events is not None
            ready = wait([worker.events, worker.process.sentinel], timeout=0.5)
            if worker.events in ready:
                try:
                    self._dispatch(worker, worker.events.recv())
                    continue
                except (EOFError, OSError):
                    pass
            elif not ready and worker.process.is_alive():
                continue
            if self._stopping:
                return
            self._on_death(worker)

    def _dispatch(self, worker: Worker, batch: list[Event]) -> None:
        by_request: dict[str, list[Event]] = {}
        finished = []
        for event in batch:
            kind = event[0]
            if kind == "stats":
                worker.stats = event[1]
                continue
            by_request.setdefault(event[1], []).append(event)
            if kind in ("done", "error"):
                finished.append(event[1])
        if finished:
            with self._lock:
                worker.inflight.difference_update(finished)
        if by_request:
            self.deliver(by_request)

    def _on_death(self, worker: Worker) -> None:
        """Fail the dead worker's requests, then start a new one on the same slot."""
        worker.alive = False
        worker.process.join(1.0)
        code = worker.process.exitcode
        with contextlib.suppress(EOFError, OSError):
            while worker.events is not None and worker.events.poll():
                self._dispatch(worker, worker.events.recv())
        with self._lock:
            lost, worker.inflight = worker.inflight, set()
        message = (
            f"worker {worker.index} ({worker.device}) stopped (exit code {code}) while "
            "serving this request; the worker is restarting, retry the request"
        )
        if lost:
            self.deliver({rid: [("error", rid, WORKER_DIED, message)] for rid in lost})
        worker.restarts += 1
        while not self._stopping:
            try:
                self._spawn(worker)
                self._await_ready(worker)
                return
            except RuntimeError:
                time.sleep(1.0)


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a child process started inside the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
