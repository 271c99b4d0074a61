"""A worker's `GET /v1/models`, fetched and parsed in one place.

Two callers need it: registration (which models a worker serves, for placement) and the
router's own `GET /v1/models` (the union of the live workers' entries). Both must agree
on what a usable entry is, so the parsing lives here once.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

ModelEntry = dict[str, Any]


class ModelListUnavailable(Exception):
    """The worker has no usable model list (no such route, unreachable, or not JSON)."""


def parse_model_list(body: bytes) -> list[ModelEntry]:
    """The entries of an OpenAI model list that have a string `id`; others are skipped.

    Raises `ModelListUnavailable` when the body is not an object (a server that is not
    an OpenAI one answered).
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ModelListUnavailable(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ModelListUnavailable("not a JSON object")
    data = parsed.get("data")
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def fetch_model_list(session: aiohttp.ClientSession, worker_url: str, timeout_secs: float) -> list[ModelEntry]:
    """`GET worker_url/v1/models`, parsed; raises `ModelListUnavailable` saying why not."""
    target = worker_url + "/v1/models"
    try:
        async with session.get(target, timeout=aiohttp.ClientTimeout(total=timeout_secs)) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ModelListUnavailable(f"GET {target} failed: {exc!r}") from None
    if status != 200:
        raise ModelListUnavailable(f"GET {target} answered {status}")
    return parse_model_list(body)
