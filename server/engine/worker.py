"""A worker process: loads its models on its device, runs the scheduler, and sends each
iteration's events back as one message.

This module imports no torch at the top: a spawned child imports it before
`worker_main` runs, and OpenMP reads its settings (`OMP_WAIT_POLICY`) when torch loads;
the pool passes them in the child's environment.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from server.engine.settings import EngineSettings

STATS_INTERVAL_S = 0.25
IDLE_POLL_S = 0.05


def worker_main(
    index: int, device: str, settings: EngineSettings, commands: Connection, events: Connection
) -> None:
    """Entry point of worker `index` (spawned by the pool)."""
    # Signals are for the front end: it drains, then stops its workers itself (a Ctrl-C
    # or SIGTERM sent to the whole process group must not kill them mid-stream).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    from server.engine.scheduler import Scheduler
    from server.model_repository import ModelRepository

    torch.set_num_threads(settings.threads(device))
    dtype = getattr(torch, settings.dtype) if device.startswith("cuda") else torch.float32
    try:
        repository = ModelRepository(settings.model_dir)
        models, errors = repository.load_all(settings.models, device, dtype)
    except Exception as exc:
        events.send([("ready", [], {"*": f"{type(exc).__name__}: {exc}"}, os.getpid())])
        return
    events.send([("ready", sorted(models), errors, os.getpid())])
    scheduler = Scheduler(models, settings.scheduler)
    last_stats = 0.0
    with torch.inference_mode():
        while True:
            out: list[Any] = []
            wait = scheduler.idle_wait(IDLE_POLL_S)
            try:
                if commands.poll(wait):
                    while commands.poll():
                        if not _handle(commands.recv(), scheduler, out):
                            return
            except (EOFError, OSError):  # the front end is gone
                return
            if scheduler.has_work():
                if out:  # command replies (errors, cancellations) go first
                    events.send(out)
                    out = []
                out.extend(scheduler.step(flush=events.send))
            now = time.monotonic()
            if out or now - last_stats > STATS_INTERVAL_S:
                if now - last_stats > STATS_INTERVAL_S:
                    out.append(("stats", scheduler.stats()))
                    last_stats = now
                events.send(out)


def _handle(command: tuple[Any, ...], scheduler: Any, out: list[Any]) -> bool:
    """Apply one command; False to stop the worker."""
    kind = command[0]
    if kind == "submit":
        out.extend(scheduler.submit(command[1]))
    elif kind == "cancel":
        out.extend(scheduler.cancel(command[1]))
    elif kind == "drop_session":
        scheduler.drop_session(command[1])
    elif kind == "stats":
        out.append(("stats", scheduler.stats()))
    elif kind == "stop":
        return False
    return True
