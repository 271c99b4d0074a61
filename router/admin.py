"""Admin HTTP API for workers: add, list, inspect, remove, drain.

    POST   /workers              {"url", "role", "bootstrap_port", "model", "labels", "kv_events_endpoint", "wait"}
                                 -> 202 + worker (pending; comes up in the background), or
                                    with "wait": true 201 once ready / 503 if it failed
    GET    /workers              -> 200 {"workers": [worker, ...]}
    GET    /workers/{id}         -> 200 worker | 404
    DELETE /workers/{id}         -> 200 worker (removed at once; in-flight requests finish)
    POST   /workers/{id}/drain   -> 202 worker (draining; leaves the list when idle), or
                                    with ?wait=true 200 once it has left

A worker object carries its load counters (`in_flight_requests`), breaker and health
counters, so tests and operators can check that counters return to zero after faults.

Wiring (router/app.py): at app start `routes += admin_routes(manager, render_error)` where
`manager` is the app's `WorkerManager` and `render_error` turns a typed error (status_code,
error_type, code, message) into an OpenAI error response. The admin key is enforced by
`router.auth.AuthMiddleware` (these paths are in its admin scope). Nothing per request or
at shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.auth import RenderError
from router.config import WorkerSpec
from router.workers.lifecycle import WorkerManager, WorkerRequestError, WorkerStartFailedError
from router.workers.worker import Worker, WorkerState

_SPEC_FIELDS = {"url", "role", "bootstrap_port", "model", "labels", "kv_events_endpoint", "wait"}


def worker_json(worker: Worker, manager: WorkerManager) -> dict[str, Any]:
    """The admin view of one worker."""
    failures, successes = manager.health_counts(worker)
    breaker = worker.breaker
    return {
        "id": worker.worker_id,
        "url": worker.url,
        "role": worker.role.value,
        "state": worker.state.value,
        "models": sorted(worker.models),
        "bootstrap_port": worker.bootstrap_port,
        "labels": worker.labels,
        "kv_events_endpoint": worker.kv_events_endpoint,
        "in_flight_requests": worker.in_flight_requests,
        "in_flight_tokens": worker.in_flight_tokens,
        "breaker": {
            "state": breaker.state.value,
            "consecutive_failures": breaker.consecutive_failures,
            "consecutive_successes": breaker.consecutive_successes,
        },
        "health": {"consecutive_failures": failures, "consecutive_successes": successes},
        "engine_info": worker.engine_info,
        "last_error": worker.last_error,
    }


def parse_worker_spec(body: Any) -> tuple[WorkerSpec, bool]:
    """Validate a POST /workers body; return the spec and the `wait` flag."""
    if not isinstance(body, dict):
        raise WorkerRequestError("body must be a JSON object such as {\"url\": \"http://host:port\"}")
    unknown = set(body) - _SPEC_FIELDS
    if unknown:
        raise WorkerRequestError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_SPEC_FIELDS)}")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise WorkerRequestError("field 'url' (string, e.g. \"http://host:port\") is required")
    role = body.get("role", "regular")
    port = body.get("bootstrap_port")
    model = body.get("model")
    labels = body.get("labels", {})
    kv_events = body.get("kv_events_endpoint")
    wait = body.get("wait", False)
    if not isinstance(role, str):
        raise WorkerRequestError("field 'role' must be a string: regular, prefill or decode")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise WorkerRequestError("field 'bootstrap_port' must be an integer or null")
    if model is not None and not isinstance(model, str):
        raise WorkerRequestError("field 'model' must be a string or null")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise WorkerRequestError("field 'labels' must be an object of string values")
    if kv_events is not None and not isinstance(kv_events, str):
        raise WorkerRequestError("field 'kv_events_endpoint' must be a string such as \"tcp://host:5557\" or null")
    if not isinstance(wait, bool):
        raise WorkerRequestError("field 'wait' must be true or false")
    spec = WorkerSpec(url=url, role=role, bootstrap_port=port, model=model, labels=labels, kv_events_endpoint=kv_events)
    return spec, wait


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status_code=status, media_type="application/json")


def admin_routes(manager: WorkerManager, render_error: RenderError) -> list[Route]:
    """Starlette routes of the admin API, bound to `manager`."""

    def handles_errors(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except WorkerRequestError as err:
                return render_error(err)

        return wrapped

    @handles_errors
    async def add_worker(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise WorkerRequestError(f"body is not valid JSON: {exc}") from None
        spec, wait = parse_worker_spec(body)
        worker = await manager.add(spec, wait=wait)
        if not wait:
            return _json(worker_json(worker, manager), 202)
        if worker.state is WorkerState.READY:
            return _json(worker_json(worker, manager), 201)
        raise WorkerStartFailedError(f"worker {worker.worker_id} did not come up: {worker.last_error}")

    @handles_errors
    async def list_workers(request: Request) -> Response:
        return _json({"workers": [worker_json(w, manager) for w in manager.registry]})

    @handles_errors
    async def get_worker(request: Request) -> Response:
        return _json(worker_json(manager.get(request.path_params["worker_id"]), manager))

    @handles_errors
    async def delete_worker(request: Request) -> Response:
        return _json(worker_json(manager.remove(request.path_params["worker_id"]), manager))

    @handles_errors
    async def drain_worker(request: Request) -> Response:
        wait = request.query_params.get("wait", "").lower() in ("1", "true", "yes")
        worker = await manager.drain(request.path_params["worker_id"], wait=wait)
        return _json(worker_json(worker, manager), 200 if wait else 202)

    return [
        Route("/workers", add_worker, methods=["POST"]),
        Route("/workers", list_workers, methods=["GET"]),
        Route("/workers/{worker_id}", get_worker, methods=["GET"]),
        Route("/workers/{worker_id}", delete_worker, methods=["DELETE"]),
        Route("/workers/{worker_id}/drain", drain_worker, methods=["POST"]),
    ]
