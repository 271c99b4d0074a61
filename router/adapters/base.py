"""The one interface every engine P/D wire protocol implements.

An adapter turns a placement plan plus a prepared request into upstream HTTP calls and
hands back the response whose body goes to the client (decode's, for a pair). It owns
only the protocol: which fields go on which leg, in which order, and what to do with the
prefill answer. Retries, breakers, load counters, timeouts and client disconnects are the
dispatcher's, so every adapter gets them for free.

Rules every adapter keeps:
- A failed leg raises `LegFailure` naming the worker that failed, so the dispatcher can
  exclude it on retry and trip its breaker; a prefill error never turns into a 200.
- When one of two concurrent legs fails, the other is cancelled (its connection closed,
  so the engine aborts it): decode must never be left waiting for KV that will not come.
- Bodies forwarded unchanged are forwarded as the client's bytes; changed bodies are the
  parsed dict plus the protocol's fields, serialised once.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson

from router.placement.types import Pair, PlacementPlan, Single
from router.prepare import CHAT_ROUTE, PreparedRequest
from router.tracing import OFF, Tracer
from router.transports.http_upstream import HttpUpstream, UpstreamError, UpstreamResponse
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.dispatch")

T = TypeVar("T")


class LegFailure(Exception):
    """One upstream leg failed: a connection error (`status` None) or an error status."""

    def __init__(self, worker: Worker, message: str, *, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.worker = worker
        self.status = status
        self.body = body
        self.message = message


@dataclass
class Upstream:
    """The answer for the client: a response whose headers arrived.

    `body` is set when the adapter already read (and possibly merged) the body; otherwise
    the dispatcher reads or streams `response`.
    """

    worker: Worker
    response: UpstreamResponse
    body: bytes | None = None


class Adapter(abc.ABC):
    """Speaks one engine family's protocol over the router's one upstream HTTP client."""

    name: ClassVar[str]
    # True: the protocol's decode workers also serve a plain request on their own
    # (prefilling locally), so the planner may send a `Single` to a decode worker.
    # False: decode needs a prefill leg every time and P/D pools always pair.
    runs_decode_only: ClassVar[bool] = False

    def __init__(self, http: HttpUpstream, tracer: Tracer = OFF) -> None:
        self.http = http
        self.tracer = tracer

    async def prepare_worker(self, worker: Worker) -> None:
        """Read what the protocol needs from a newly registered worker (default: nothing).

        Raise to report the worker as unusable; the message should say what to fix.
        """
        return None

    @abc.abstractmethod
    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        """Run the request's upstream legs; return the response for the client."""

    # Helpers shared by the protocols -------------------------------------------------

    async def send_whole(self, plan: Single, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        """The client's bytes, unchanged, to one worker that runs the whole request."""
        return Upstream(plan.worker, await self.post(plan.worker, request.route, request.raw, headers))

    async def post(self, worker: Worker, route: str, data: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """POST `data` to `worker`; a connection failure becomes `LegFailure(status=None)`.

        Every upstream leg of every protocol goes through here, so this is where its span
        starts and its `traceparent` header is added.
        """
        url = worker.url + route
        with self.tracer.leg(worker, url) as leg:
            try:
                resp = await self.http.post(url, data, leg.inject(headers))
            except UpstreamError as exc:
                raise LegFailure(worker, f"cannot reach {worker.role.value} worker {worker.url}: {exc!r}") from exc
            leg.answered(resp.status)
            return resp

    async def post_leg(
        self, worker: Worker, route: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """A leg whose whole JSON answer the router needs (a prefill leg). Non-200 fails it."""
        resp = await self.post(worker, route, orjson.dumps(body), headers)
        try:
            data = await resp.read()
        except UpstreamError as exc:
            raise LegFailure(worker, f"{worker.role.value} worker {worker.url} dropped the connection: {exc!r}") from exc
        finally:
            resp.release()  # closes the connection unless the whole body arrived
        if resp.status != 200:
            raise LegFailure(
                worker,
                f"{worker.role.value} worker {worker.url} answered {resp.status}",
                status=resp.status,
                body=data,
            )
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise LegFailure(worker, f"{worker.role.value} worker {worker.url} answered invalid JSON", status=502) from None
        if not isinstance(parsed, dict):
            raise LegFailure(worker, f"{worker.role.value} worker {worker.url} answered a non-object", status=502)
        return parsed

    async def get_json(self, worker: Worker, url: str) -> Any:
        """GET a JSON document the protocol needs (bootstrap info, transfer info)."""
        try:
            async with asyncio.timeout(10):
                resp = await self.http.request("GET", url, b"", {})
                try:
                    data = await resp.read()
                finally:
                    resp.release()
        except (TimeoutError, UpstreamError) as exc:
            raise LegFailure(worker, f"GET {url} failed: {exc!r}") from exc
        if resp.status != 200:
            raise LegFailure(worker, f"GET {url} answered {resp.status}", status=502, body=data)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise LegFailure(worker, f"GET {url} failed: {exc!r}") from exc


def expect_single(plan: PlacementPlan) -> Single:
    if not isinstance(plan, Single):
        raise TypeError(f"this backend serves co-located workers; got {plan!r}")
    return plan


def expect_pair(plan: PlacementPlan) -> Pair:
    if not isinstance(plan, Pair):
        raise TypeError(f"this backend needs a prefill/decode pair; got {plan!r}")
    return plan


def prefill_body(request: PreparedRequest, kv_transfer_params: dict[str, Any] | None) -> dict[str, Any]:
    """The prefill leg of a relay protocol: one token, no stream, optional KV params.

    `stream_options` and `min_tokens` go: engines reject them with `stream=false` or
    `max_tokens=1`.
    """
    body = {k: v for k, v in request.body.items() if k not in ("stream_options", "min_tokens")}
    body["max_tokens"] = 1
    body["stream"] = False
    if request.route == CHAT_ROUTE:
        body["max_completion_tokens"] = 1
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    return body


async def run_both(prefill: Awaitable[T], decode: Awaitable[Upstream]) -> tuple[T, Upstream]:
    """Run both legs at once; if either fails, cancel the other and close what it opened.

    Returns only when the prefill leg finished and decode's headers arrived, so a prefill
    failure can still fail (and retry) the request before anything reached the client.
    """
    p_task = asyncio.ensure_future(prefill)
    d_task = asyncio.ensure_future(decode)
    try:
        done, _ = await asyncio.wait({p_task, d_task}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (p_task, d_task):  # prefill first: its failure is the root cause
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return p_task.result(), d_task.result()
    except BaseException:
        await cancel_legs(p_task, d_task)
        raise


async def cancel_legs(*tasks: asyncio.Future[Any]) -> None:
    """Cancel unfinished legs and close responses finished legs already opened."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.cancelled() or task.exception() is not None:
            continue
        result = task.result()
        if isinstance(result, Upstream):
            result.response.close()
