"""Every admin route (and /metrics) follows the admin rule: without an admin key, loopback
clients only; with one, the key. Checked from a non-loopback client address, which a server on
127.0.0.1 never sees: the access check answers before any endpoint runs, so no process is needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from opta_lmx.config import Config, ServerConfig
from opta_lmx.gateway import admin

ROUTES = [
    (method, route.path.replace("{name:path}", "tiny").replace("{id:pull_id}", "0123456789ab"))
    for route in admin.routes()
    for method in route.methods or ()
    if method != "HEAD"
]


def client(server: ServerConfig, address: str) -> TestClient:
    app = Starlette(routes=admin.routes())
    app.state.gateway = SimpleNamespace(config=Config(server=server))
    return TestClient(app, base_url="http://127.0.0.1:1234", client=(address, 50000))


def test_every_route_is_covered() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/metrics", "/admin/events", "/admin/models", "/admin/config/reload", "/admin/models/tiny/load"} <= paths
    assert {"/admin/models/pull", "/admin/models/pull/0123456789ab/cancel", "/admin/models/pull/0123456789ab/events"} <= paths
    assert ("DELETE", "/admin/models/tiny") in ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_an_admin_key_other_addresses_are_refused(method: str, path: str) -> None:
    response = client(ServerConfig(), "192.168.1.20").request(method, path)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden" and "admin_key" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_with_an_admin_key_it_is_required_from_any_address(method: str, path: str) -> None:
    keyed = ServerConfig(admin_key="adm-0123", api_keys=["sk-api"])
    for address in ("192.168.1.20", "127.0.0.1"):
        for headers in ({}, {"authorization": "Bearer sk-api"}, {"authorization": "Bearer adm-wrong"}):
            response = client(keyed, address).request(method, path, headers=headers)
            assert response.status_code == 401, (address, headers, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
