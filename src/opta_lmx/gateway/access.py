"""Who may use the server: API keys, the admin key, and the browser guards.

- Keys: with ``[server] api_keys`` set, the API routes need one of them, as
  ``Authorization: Bearer KEY`` (OpenAI's SDKs, Ollama's with a header) or ``x-api-key: KEY``
  (Anthropic's). ``/admin`` needs ``admin_key``; without one it answers loopback clients only.
  Keys are compared in constant time and never logged.
- DNS rebinding: a web page whose own name is rebound to 127.0.0.1 sends its name in ``Host``.
  Only ``localhost``, IP addresses (which cannot be rebound) and ``allowed_hosts`` are answered.
- Cross-site requests: a browser sends ``Origin`` with every cross-origin request, and a plain
  form post needs no CORS preflight, so without a check any page could make the user's browser
  drive the API. A request whose ``Origin`` is not in ``cors_origins`` is refused.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import Request

from opta_lmx.config import ServerConfig
from opta_lmx.errors import Forbidden, Unauthorized

_LOCAL_NAMES = frozenset({"localhost"})


def check_access(request: Request, server: ServerConfig, admin: bool = False) -> None:
    """Raises ``Forbidden`` or ``Unauthorized`` unless the request may use the route."""
    _check_host(request, server)
    _check_origin(request, server)
    if admin:
        _check_admin(request, server)
    elif server.api_keys and not _presented(request, server.api_keys):
        raise Unauthorized("Missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")


def _check_host(request: Request, server: ServerConfig) -> None:
    host = _hostname(request.headers.get("host", ""))
    if not host or host in _LOCAL_NAMES or _is_ip(host) or host in server.allowed_hosts:
        return
    raise Forbidden(f"Host '{host}' is not allowed: add it to [server] allowed_hosts to serve it.")


def _check_origin(request: Request, server: ServerConfig) -> None:
    origin = request.headers.get("origin")
    if origin is None or origin in server.cors_origins or "*" in server.cors_origins:
        return
    raise Forbidden(f"Requests from web origin '{origin}' are not allowed: add it to [server] cors_origins.")


def _check_admin(request: Request, server: ServerConfig) -> None:
    if server.admin_key:
        if not _presented(request, [server.admin_key]):
            raise Unauthorized("Missing or wrong admin key: send 'Authorization: Bearer <admin_key>'.")
        return
    client = request.client.host if request.client else ""
    if not (_is_ip(client) and ipaddress.ip_address(client).is_loopback):
        raise Forbidden("The admin API answers loopback clients only unless [server] admin_key is set.")


def _presented(request: Request, keys: list[str]) -> bool:
    given = request.headers.get("x-api-key", "")
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    # Every key is compared, each in constant time: the time taken says nothing of which matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    return bool(given) and any(matches)


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:1234
        return host[1 : host.find("]")].lower() if "]" in host else ""
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
