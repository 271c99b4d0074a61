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

Bad bodies are 400 `invalid_worker` errors whose `param` names the field, from the same
validation as `--config-file` entries (router.workers.specs).

Wiring (router/app.py): at app start `routes += admin_routes(manager, render_error)` where
`manager` is the app's `WorkerManager` and `render_error` is `router.render.error_response`.
The admin key is enforced by `router.auth.AuthMiddleware` (these paths are in its admin
scope). Nothing per request or at shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.config import WorkerSpec
from router.errors import WorkerRequestError, WorkerStartFailedError
from router.render import RenderError
from router.workers.lifecycle import WorkerManager
from router.workers.specs import parse_worker_spec
from router.workers.worker import Worker, WorkerState


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


def parse_add_request(body: Any) -> tuple[WorkerSpec, bool]:
    """A POST /workers body: the worker spec (`router.workers.specs`) and the `wait` flag."""
    spec = parse_worker_spec(body, handled=("wait",))
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise WorkerRequestError("field 'wait' must be true or false", param="wait")
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
        spec, wait = parse_add_request(body)
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
