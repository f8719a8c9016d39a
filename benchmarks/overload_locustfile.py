"""The Locust user of the overload benchmark (`benchmarks/bench_overload.py` runs it; it
imports nothing from this repository, like clients/locustfile.py).

Each user sends streamed POST /v1/generate requests (KVSERVE_MODEL, a random printable
prompt of KVSERVE_PROMPT_TOKENS bytes, KVSERVE_NEW_TOKENS new tokens, `stop: []`), paced
at one request every KVSERVE_PACING_S seconds (Locust's `constant_pacing`: a request that
takes longer is followed at once by the next; 0 means back to back). Every answer lands
in one Locust entry named for what it was, so the CSV counts each outcome:

    "generate ok"              200 and the stream ended with `event: done`
    "refused 429"/"refused 503" the server refused with that status and a `Retry-After`
                               header (a success here: it is how overload must be answered)
and failures (Locust's failure count, with the reason in its failures CSV):
    a 200 whose stream ended without `event: done` or carried `event: error`; 429/503
    without `Retry-After`; any other status (5xx above all); no answer within
    KVSERVE_TIMEOUT seconds or a broken connection (a hung or dropped request).
"""

from __future__ import annotations

import os
import random
import string

from locust import HttpUser, constant, constant_pacing, task

PROMPT_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
MODEL = os.environ.get("KVSERVE_MODEL", "text-lm")
PROMPT_TOKENS = int(os.environ.get("KVSERVE_PROMPT_TOKENS", "32"))
NEW_TOKENS = int(os.environ.get("KVSERVE_NEW_TOKENS", "32"))
PACING_S = float(os.environ.get("KVSERVE_PACING_S", "0"))
TIMEOUT = (10.0, float(os.environ.get("KVSERVE_TIMEOUT", "60")))  # (connect, read) seconds


class OverloadUser(HttpUser):
    wait_time = constant_pacing(PACING_S) if PACING_S > 0 else constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def generate(self) -> None:
        body = {
            "model": MODEL,
            "prompt": "".join(self.rng.choices(PROMPT_CHARS, k=PROMPT_TOKENS)),
            "max_new_tokens": NEW_TOKENS,
            "stop": [],
            "stream": True,
        }
        with self.client.post(
            "/v1/generate", json=body, name="generate", catch_response=True, timeout=TIMEOUT
        ) as resp:
            status = resp.status_code
            if status == 200:
                text = resp.text
                if "event: error" in text or "event: done" not in text:
                    resp.failure(f"stream not completed: {text[-200:]!r}")
                else:
                    resp.request_meta["name"] = "generate ok"
                    resp.success()
            elif status in (429, 503):
                if resp.headers.get("Retry-After"):
                    resp.request_meta["name"] = f"refused {status}"
                    resp.success()
                else:
                    resp.failure(f"HTTP {status} without Retry-After")
            elif not status:
                resp.failure(f"no answer: {resp.error!r}")
            else:
                resp.failure(f"HTTP {status}: {resp.text[:200]}")
