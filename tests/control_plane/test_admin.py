"""Admin API over ASGI: add / list / get / delete / drain, validation errors, admin key."""

import httpx
import pytest
from starlette.applications import Starlette

from router.admin import admin_routes, parse_add_request
from router.auth import Authenticator, AuthMiddleware
from router.config import HealthCheckConfig, RouterConfig
from router.errors import WorkerRequestError
from router.load_guard import LoadGuard
from router.render import error_response
from router.workers.lifecycle import WorkerManager
from router.workers.registry import WorkerRegistry
from testbed.ports import free_port

ADMIN = {"Authorization": "Bearer adm"}


@pytest.fixture
async def admin(session):
    cfg = RouterConfig(
        health=HealthCheckConfig(interval_secs=3600, timeout_secs=1),
        worker_startup_timeout_secs=0.3,
        worker_startup_check_interval=0.05,
    )
    manager = WorkerManager(cfg, WorkerRegistry(), session=session)
    await manager.start()
    app = Starlette(routes=admin_routes(manager, error_response))
    app.add_middleware(AuthMiddleware, authenticator=Authenticator("inf", "adm"), render_error=error_response)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        yield client, manager
    await manager.stop()


async def test_add_list_get_delete(admin, endpoint):
    c, manager = admin
    r = await c.post("/workers", json={"url": endpoint.url, "labels": {"rack": "1"}, "wait": True}, headers=ADMIN)
    assert r.status_code == 201, r.text
    w = r.json()
    assert (w["state"], w["role"], w["models"], w["labels"], w["in_flight_requests"]) == (
        "ready",
        "regular",
        ["tiny"],
        {"rack": "1"},
        0,
    )
    assert w["breaker"]["state"] == "closed"
    listed = (await c.get("/workers", headers=ADMIN)).json()["workers"]
    assert [x["id"] for x in listed] == [w["id"]]
    assert (await c.get(f"/workers/{w['id']}", headers=ADMIN)).json()["url"] == endpoint.url
    r = await c.delete(f"/workers/{w['id']}", headers=ADMIN)
    assert r.status_code == 200 and len(manager.registry) == 0
    r = await c.get(f"/workers/{w['id']}", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "worker_not_found"


async def test_add_without_wait_is_accepted_pending(admin, endpoint):
    c, _ = admin
    endpoint.health_status = 503
    r = await c.post("/workers", json={"url": endpoint.url}, headers=ADMIN)
    assert r.status_code == 202 and r.json()["state"] == "pending"


async def test_add_with_wait_reports_failure(admin):
    c, _ = admin
    r = await c.post("/workers", json={"url": f"http://127.0.0.1:{free_port()}", "wait": True}, headers=ADMIN)
    assert r.status_code == 503 and r.json()["error"]["code"] == "worker_failed"
    (w,) = (await c.get("/workers", headers=ADMIN)).json()["workers"]
    assert w["state"] == "failed" and "timeout" in w["last_error"]


async def test_duplicate_is_409(admin, endpoint):
    c, _ = admin
    assert (await c.post("/workers", json={"url": endpoint.url, "wait": True}, headers=ADMIN)).status_code == 201
    r = await c.post("/workers", json={"url": endpoint.url}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "worker_exists"


@pytest.mark.parametrize(
    "body,match,param",
    [
        (b"{not json", "not valid JSON", None),
        (b"[1]", "JSON object", None),
        (b'{"role": "regular"}', "'url'", "url"),
        (b'{"url": 5}', "'url'", "url"),
        (b'{"url": "http://h:1", "colour": "red"}', "unknown field", "colour"),
        (b'{"url": "http://h:1", "bootstrap_port": "8998"}', "bootstrap_port", "bootstrap_port"),
        (b'{"url": "http://h:1", "bootstrap_port": true}', "bootstrap_port", "bootstrap_port"),
        (b'{"url": "http://h:1", "labels": {"a": 1}}', "labels", "labels"),
        (b'{"url": "http://h:1", "wait": "yes"}', "wait", "wait"),
        (b'{"url": "http://h:1", "role": "prefill"}', "--pd-disaggregation", "role"),
        (b'{"url": "ftp://h:1"}', "http://host:port", "url"),
        (b'{"url": "http://h:1", "kv_events_endpoint": 5557}', "kv_events_endpoint", "kv_events_endpoint"),
        (b'{"url": "http://h:1", "kv_events_endpoint": "h:5557"}', "tcp://host:5557", "kv_events_endpoint"),
    ],
)
async def test_bad_bodies_are_400_with_openai_error(admin, body, match, param):
    c, manager = admin
    r = await c.post("/workers", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_worker", param)
    assert match in err["message"]
    assert len(manager.registry) == 0


def test_parse_add_request_defaults():
    spec, wait = parse_add_request({"url": "http://h:1"})
    assert (spec.role, spec.bootstrap_port, spec.model, spec.labels, wait) == ("regular", None, None, {}, False)
    assert spec.kv_events_endpoint is None
    spec, wait = parse_add_request({"url": "http://h:1", "kv_events_endpoint": "tcp://h:5557", "wait": True})
    assert spec.kv_events_endpoint == "tcp://h:5557" and wait is True
    with pytest.raises(WorkerRequestError):
        parse_add_request({"url": "http://h:1", "model": 3})


async def test_drain_waits_and_removes(admin, endpoint):
    c, manager = admin
    wid = (await c.post("/workers", json={"url": endpoint.url, "wait": True}, headers=ADMIN)).json()["id"]
    worker = manager.get(wid)
    guard = LoadGuard([worker])
    r = await c.post(f"/workers/{wid}/drain", headers=ADMIN)
    assert r.status_code == 202 and r.json()["state"] == "draining" and r.json()["in_flight_requests"] == 1
    assert (await c.get(f"/workers/{wid}", headers=ADMIN)).json()["state"] == "draining"
    guard.release()
    r = await c.post(f"/workers/{wid}/drain?wait=true", headers=ADMIN)
    assert r.status_code == 200 and r.json()["in_flight_requests"] == 0
    assert (await c.get(f"/workers/{wid}", headers=ADMIN)).status_code == 404


async def test_admin_key_required(admin, endpoint):
    c, _ = admin
    assert (await c.get("/workers")).status_code == 401
    assert (await c.get("/workers", headers={"Authorization": "Bearer inf"})).status_code == 401
    r = await c.delete("/workers/w1", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
