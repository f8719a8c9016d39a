"""The server's settings: one pydantic-settings object. Every field is also a
`KVSERVE_<FIELD>` environment variable and a `kvserve serve --<field>` flag (flags win
over the environment, the environment over the defaults). Lists are comma-separated in
both (`KVSERVE_API_KEYS=key1,key2`, `--devices cuda:0,cuda:1`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.engine.scheduler_settings import SchedulerSettings
from server.engine.settings import EngineSettings

MiB = 2**20


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KVSERVE_", extra="forbid")

    model_dir: Path | None = Field(
        None, description="directory of checkpoints, one sub-directory each (default: the demos)"
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="serve only these models of the directory (comma-separated)"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    devices: Annotated[list[str], NoDecode] = Field(
        ["cpu"], description="device slots, comma-separated: cpu, cuda:0, cuda:1, ..."
    )
    workers_per_device: int = Field(1, ge=1, description="worker processes per device slot")
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker (default: measured per device)"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="weights' dtype on CUDA devices (CPU workers use float32)"
    )
    kv_budget_mb: int = Field(512, ge=1, description="KV cache budget per worker, MiB")
    max_running: int = Field(32, ge=1, description="sequences decoded together per worker")
    max_batch_tokens: int = Field(512, ge=1, description="tokens one scheduler step may feed")
    max_waiting: int = Field(64, ge=0, description="queued requests per worker before 429")
    max_new_tokens: int = Field(1024, ge=1, description="largest max_new_tokens a request may ask")
    max_batch_size: int = Field(64, ge=1, description="most sequences in one /v1/predict body")
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="largest request body, bytes")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="seconds a request's headers, and then its whole body, may take to arrive; "
        "a slower client (slowloris) gets 408 or, still in its headers, a closed connection",
    )
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of a request, seconds")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: wait this long for streams")
    stream_send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a stream whose client takes no data for this long (its socket is full) is "
        "abandoned: its request cancelled, its connection dropped",
    )
    session_ttl_s: float = Field(1800.0, gt=0, description="idle time before a session expires")
    max_sessions: int = Field(10_000, ge=1, description="most open sessions")
    max_sessions_per_key: int = Field(
        1000,
        ge=1,
        description="most open sessions one API key may hold (429 past it), so that one key "
        "cannot take all of max_sessions; without API keys only max_sessions applies",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [], description="bearer keys, comma-separated; empty: no auth"
    )
    session_store: str = Field(
        "memory", description="where session histories live: memory, or redis://host:6379/0"
    )
    replica_name: str | None = Field(
        None, description="name sent in the X-Replica response header (default: host name)"
    )
    log_format: Literal["text", "json"] = Field("text", description="access log format")
    log_level: str = Field("INFO", description="log level")

    @field_validator("models", "devices", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            model_dir=str(self.model_dir) if self.model_dir else None,
            models=self.models,
            devices=self.devices,
            workers_per_device=self.workers_per_device,
            threads_per_worker=self.threads_per_worker,
            dtype=self.dtype,
            scheduler=SchedulerSettings(
                max_running=self.max_running,
                max_batch_tokens=self.max_batch_tokens,
                kv_budget_bytes=self.kv_budget_mb * MiB,
                predict_max_batch=self.max_batch_size,
            ),
            max_waiting=self.max_waiting,
            request_timeout_s=self.request_timeout_s,
            session_ttl_s=self.session_ttl_s,
            max_sessions=self.max_sessions,
        )

    def key_values(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_keys]
