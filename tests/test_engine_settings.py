"""The engine's settings: worker slots and the measured thread defaults."""

from __future__ import annotations

from server.engine.settings import EngineSettings, default_threads


def test_one_worker_process_per_device_slot() -> None:
    settings = EngineSettings(devices=["cuda:0", "cuda:1"], workers_per_device=2)
    assert settings.slots() == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


def test_thread_defaults_follow_the_measurements() -> None:
    assert default_threads("cpu", 1, cores=2) == 1  # 2 cores: 1 thread beat 2
    assert default_threads("cpu", 2, cores=2) == 1
    assert default_threads("cpu", 1, cores=16) == 15  # one core left to the front end
    assert default_threads("cpu", 4, cores=16) == 3
    assert default_threads("cuda:0", 1, cores=16) == 2  # 2 beat 1 on the H200 host
    assert EngineSettings(threads_per_worker=3).threads("cpu") == 3
