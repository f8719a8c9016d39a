"""The engine's settings (the HTTP layer's pydantic settings object fills these in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.scheduler_settings import SchedulerSettings

# Chosen by benchmarks/bench_worker_threads.py on the 2-core machines: one torch thread
# per worker with passive OpenMP waiting (see the README's benchmark table).
DEFAULT_THREADS_PER_WORKER = 1
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"


@dataclass
class EngineSettings:
    model_dir: str | None = None  # None: the bundled demo models
    models: list[str] | None = None  # None: every model in model_dir
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # "cpu", "cuda:0", ...
    workers_per_device: int = 1
    threads_per_worker: int | None = None  # None: DEFAULT_THREADS_PER_WORKER
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

    def threads(self) -> int:
        return self.threads_per_worker or DEFAULT_THREADS_PER_WORKER
