"""lmxctl's way to a server elsewhere: the admin API over HTTP, with the admin key.

``HttpClient.call`` takes the same control messages as the local client and answers with the
same replies, so every command prints the same whichever way it went: each message becomes the
admin route that does the same thing (both end in the supervisor's one handler), and the JSON
answer is read back into the reply's Struct. The standard library's HTTP client is enough here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from opta_lmx.ctl.local import QUICK_MS, NotRunning
from opta_lmx.proto import (
    CancelPull,
    CommandResult,
    ControlReply,
    ControlRequest,
    GetMemory,
    GetModels,
    GetPulls,
    GetStatus,
    MemoryReply,
    ModelInfo,
    ModelsReply,
    PullJob,
    PullModel,
    PullsReply,
    Reload,
    RemoveModel,
    Restart,
    Signal,
    Start,
    StatusReply,
    Stop,
    Tail,
    TailReply,
)


class Refused(Exception):
    """The server refused the request (a missing or wrong admin key, a host it does not serve)."""


class Unsupported(Exception):
    """A command that only the local control socket offers."""


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class HttpClient:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def call(self, message: ControlRequest, timeout_ms: int = QUICK_MS) -> ControlReply:
        timeout = timeout_ms / 1000
        try:
            return self._call(message, timeout)
        except HttpError as error:
            if error.status in (401, 403):
                raise Refused(error.message) from None
            return CommandResult(ok=False, message=error.message, code=error.code)

    def _call(self, message: ControlRequest, timeout: float) -> ControlReply:
        match message:
            case GetStatus(name=name):
                try:
                    return StatusReply([info.status for info in self._models(name, timeout)])
                except HttpError as error:
                    if error.status == 404:
                        return StatusReply([])  # as the socket answers for an unknown name
                    raise
            case GetModels(name=name):
                return ModelsReply(self._models(name, timeout))
            case GetMemory(model=model):
                query = f"?{urlencode({'model': model})}" if model else ""
                return msgspec.convert(self._request("GET", f"/admin/memory{query}", timeout), MemoryReply)
            case Start(name=name):
                return self._command(f"{_model_path(name)}/load", timeout)
            case Stop(name=name):
                return self._command(f"{_model_path(name)}/unload", timeout)
            case Restart(name=name):
                return self._command(f"{_model_path(name)}/restart", timeout)
            case Signal(name=name, signal=sig):
                return self._command(f"{_model_path(name)}/signal", timeout, {"signal": sig})
            case Tail(name=name, offset=offset):
                body = self._request("GET", f"{_model_path(name)}/log?offset={offset}", timeout)
                return TailReply(text=body["text"], offset=body["offset"])
            case Reload():
                return self._command("/admin/config/reload", timeout)
            case PullModel(repo=repo, revision=revision, quant=quant):
                body = self._request("POST", "/admin/models/pull", timeout, {"repo": repo, "revision": revision, "quant": quant})
                return PullsReply([msgspec.convert(body, PullJob)])
            case GetPulls(id=None):
                body = self._request("GET", "/admin/models/pull", timeout)
                return PullsReply([msgspec.convert(job, PullJob) for job in body["jobs"]])
            case GetPulls(id=job_id):
                return PullsReply([msgspec.convert(self._request("GET", f"/admin/models/pull/{quote(job_id or '', safe='')}", timeout), PullJob)])
            case CancelPull(id=job_id):
                return self._command(f"/admin/models/pull/{quote(job_id, safe='')}/cancel", timeout)
            case RemoveModel(name=name):
                body = self._request("DELETE", _model_path(name), timeout)
                return CommandResult(ok=True, message=body.get("message", ""))
        raise Unsupported(f"{type(message).__name__} is available on this machine's control socket only")

    def _models(self, name: str | None, timeout: float) -> list[ModelInfo]:
        if name is not None:
            return [msgspec.convert(self._request("GET", _model_path(name), timeout), ModelInfo)]
        body = self._request("GET", "/admin/models", timeout)
        return [msgspec.convert(model, ModelInfo) for model in body["models"]]

    def _command(self, path: str, timeout: float, payload: dict[str, Any] | None = None) -> CommandResult:
        body = self._request("POST", path, timeout, payload)
        return CommandResult(ok=True, message=body.get("message", ""))

    def _request(self, method: str, path: str, timeout: float, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data is not None else {})}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunning(f"no Opta-LMX answers at {self.url} ({reason})") from None
        except ValueError:
            raise NotRunning(f"{self.url} answered, but not as Opta-LMX's admin API does (not JSON)") from None

    def close(self) -> None:
        pass


def _model_path(name: str) -> str:
    return f"/admin/models/{quote(name, safe='')}"


def _http_error(exc: urllib.error.HTTPError) -> HttpError:
    """The error in OpenAI's shape, as the admin API answers; a body of another shape is named
    by its status."""
    try:
        error = json.loads(exc.read())["error"]
        return HttpError(exc.code, str(error["message"]), str(error.get("code") or ""))
    except (ValueError, KeyError, TypeError):
        return HttpError(exc.code, f"HTTP {exc.code} {exc.reason}", "")
