"""The serving engine: workers, scheduling, KV pool (see scheduler.py, pool.py)."""
