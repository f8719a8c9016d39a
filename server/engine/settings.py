"""The engine's settings (the HTTP layer's pydantic settings object fills these in)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from server.engine.scheduler_settings import SchedulerSettings

# Chosen by benchmarks/bench_worker_threads.py (README table, benchmarks/RESULTS.md):
# - 2-core CPU machine, one CPU worker: 1 thread + PASSIVE gave 1040 tok/s at 8 streams;
#   2 threads gave 642 (PASSIVE) or, busy-waiting (ACTIVE), starved the front end (a new
#   request's first token 631 ms instead of 18 ms) and kept a core spinning when idle.
# - H200 host (16 cores), one CUDA worker: 2 threads + PASSIVE gave 3267 tok/s vs 1916
#   with 1 thread (the host side of a GPU step is launch-bound).
DEFAULT_THREADS_PER_WORKER = 1
DEFAULT_CUDA_THREADS_PER_WORKER = 2
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(device: str, cpu_workers: int, cores: int | None = None) -> int:
    """Torch threads for one worker: 2 for a CUDA worker; for a CPU worker its share of
    the cores, less one left to the front end when the share is over 2 cores (measured
    only on 2 cores, where the share is 2 and one thread is best)."""
    if device.startswith("cuda"):
        return DEFAULT_CUDA_THREADS_PER_WORKER
    share = (cores or usable_cores()) // max(1, cpu_workers)
    return DEFAULT_THREADS_PER_WORKER if share <= 2 else share - 1


@dataclass
class EngineSettings:
    model_dir: str | None = None  # None: the bundled demo models
    models: list[str] | None = None  # None: every model in model_dir
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # "cpu", "cuda:0", ...
    workers_per_device: int = 1
    threads_per_worker: int | None = None  # None: default_threads(device, CPU workers)
    omp_wait_policy: str = DEFAULT_OMP_WAIT_POLICY
    dtype: str = "float32"  # "float16" / "bfloat16" for CUDA devices
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    max_waiting: int = 64  # requests queued per worker beyond max_running
    retry_after_s: float = 1.0  # the hint an Overloaded error carries
    request_timeout_s: float = 300.0  # default deadline of a request
    session_ttl_s: float = 1800.0
    max_sessions: int = 10_000
    sweep_interval_s: float = 30.0
    worker_start_timeout_s: float = 180.0

    def slots(self) -> list[str]:
        """One device name per worker process."""
        return [d for d in self.devices for _ in range(self.workers_per_device)]

    def threads(self, device: str = "cpu") -> int:
        """Torch threads of a worker on `device`."""
        if self.threads_per_worker:
            return self.threads_per_worker
        cpu_workers = sum(1 for slot in self.slots() if slot == "cpu")
        return default_threads(device, cpu_workers)
