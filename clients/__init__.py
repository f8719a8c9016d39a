"""kvserve clients (HTTP only; never import `server` or `model_core`).

`kvserve_client`: the Python client, `Client` (sync) and `AsyncClient` (asyncio), on httpx;
import from it (`from clients.kvserve_client import Client`). It gathers the public names
of `sync_client`, `async_client`, `results`, `errors`, `sse`, `retry`, `request_bodies`,
`settings` and `stream_state`.
"""
