"""The one error tree: every client-visible error's status, OpenAI body and headers."""

from __future__ import annotations

import orjson
import pytest

from router import errors
from router.errors import ApiError, TypedError
from router.render import error_response, sse_error_event

# What clients get for each cause: (status, type, code). A new error class must be added
# here, so its client-visible contract is written down once and checked.
CONTRACT: dict[type[TypedError], tuple[int, str, str]] = {
    errors.AuthError: (401, "invalid_request_error", "invalid_api_key"),
    errors.AdmissionRejected: (429, "rate_limit_exceeded", "rejected"),
    errors.RateLimited: (429, "rate_limit_exceeded", "rate_limited"),
    errors.QueueFull: (429, "rate_limit_exceeded", "queue_full"),
    errors.QueueTimeout: (503, "service_unavailable", "queue_timeout"),
    errors.PlacementError: (503, "service_unavailable", "no_available_workers"),
    errors.NoWorkersError: (503, "service_unavailable", "no_available_workers"),
    errors.NoHealthyPrefillError: (503, "service_unavailable", "no_healthy_prefill"),
    errors.NoHealthyDecodeError: (503, "service_unavailable", "no_healthy_decode"),
    errors.WorkerOverloadShedError: (503, "service_unavailable", "worker_overload_protection_shed"),
    errors.UnknownModelError: (404, "invalid_request_error", "model_not_found"),
    errors.WorkerRequestError: (400, "invalid_request_error", "invalid_worker"),
    errors.WorkerConflictError: (409, "invalid_request_error", "worker_exists"),
    errors.WorkerNotFoundError: (404, "invalid_request_error", "worker_not_found"),
    errors.WorkerStartFailedError: (503, "service_unavailable", "worker_failed"),
    errors.ShuttingDown: (503, "service_unavailable", "shutting_down"),
    errors.InvalidGenerationRequest: (400, "invalid_request_error", "invalid_parameter"),
    # vLLM's HTTP body for a chat its template refuses (what the router relays for HTTP workers).
    errors.ChatTemplateRejected: (400, "BadRequestError", "400"),
}


def _all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_all_subclasses(direct)}}


def test_every_typed_error_has_a_written_contract():
    assert _all_subclasses(TypedError) == set(CONTRACT)


@pytest.mark.parametrize("cls", list(CONTRACT), ids=lambda c: c.__name__)
def test_typed_errors_render_their_status_and_openai_body(cls):
    status, type_, code = CONTRACT[cls]
    err = cls("what to do next", param="field")
    assert isinstance(err, ApiError)
    response = error_response(err)
    assert response.status_code == status
    assert orjson.loads(response.body) == {
        "error": {"message": "what to do next", "type": type_, "param": "field", "code": code}
    }


def test_auth_errors_carry_the_bearer_challenge():
    response = error_response(errors.AuthError("missing API key"))
    assert response.headers["www-authenticate"] == "Bearer" and "retry-after" not in response.headers


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (0.0, "1"), (0.2, "1"), (1.0, "1"), (2.1, "3")])
def test_retry_after_is_whole_seconds_and_at_least_one(retry_after, header):
    for err in (errors.QueueFull("full", retry_after=retry_after), errors.NoWorkersError("none", retry_after=retry_after)):
        assert error_response(err).headers.get("retry-after") == header


def test_api_error_takes_its_type_from_the_status():
    assert (ApiError(400, "bad").type, ApiError(502, "x").type, ApiError(599, "x").type) == (
        "invalid_request_error",
        "upstream_error",
        "server_error",
    )
    assert ApiError(400, "bad", type="custom").type == "custom"


def test_a_started_stream_ends_with_the_error_event_and_done():
    event = sse_error_event(ApiError(502, "worker dropped the connection", code="upstream_error"))
    first, done = event.split(b"\n\n")[:2]
    assert orjson.loads(first.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert done == b"data: [DONE]"


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (b'{"error": {"message": "prompt too long", "type": "BadRequestError", "code": 400}}', "prompt too long", "400"),
        (b'{"object": "error", "message": "old style"}', "worker http://w answered 400: old style", "upstream_error"),
        (b"plain text", "worker http://w answered 400: plain text", "upstream_error"),
        (b"", "worker http://w answered 400: HTTP 400", "upstream_error"),
    ],
)
def test_engine_errors_keep_the_engines_message(body, message, code):
    err = ApiError.from_upstream(400, body, "http://w")
    assert (err.status, err.message, err.code) == (400, message, code)
