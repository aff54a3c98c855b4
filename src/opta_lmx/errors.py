"""Every error Opta-LMX raises on purpose, and how each looks on the wire.

    LmxError
     ├── ConfigError                  bad or unreadable config file (start-up, reload)
     ├── ProtocolError                a peer speaks another proto_version or sends garbage
     ├── ModelStoreError              a model on disk or on a hub cannot be read, imported, pulled or removed
     │    ├── UnsupportedModel             an architecture, tokenizer or file layout the importer cannot handle
     │    ├── LocalModelNotFound           no model of that name on disk
     │    ├── ModelInUse                   refused while the model is loaded
     │    └── DownloadError                a pull failed: repo or file missing, network, checksum, disk full
     └── ApiError                     anything an HTTP client sees: status + OpenAI error body
          ├── RequestError            this request is wrong; retrying it as is will fail again
          │    ├── InvalidRequest          400 invalid_request_error (bad JSON, wrong type, missing field)
          │    ├── UnsupportedParameter    400 a parameter we do not honour (never silently ignored)
          │    ├── ContextLengthExceeded   400 context_length_exceeded
          │    ├── Unauthorized            401 invalid_api_key (no key, or a wrong one)
          │    ├── Forbidden               403 forbidden (a host or web origin not allowed; /admin off loopback)
          │    ├── ModelNotFound           404 model_not_found
          │    ├── PullNotFound            404 pull_not_found (no pull job of that id)
          │    ├── StateConflict           409 already_started / not_running (an admin command on a model
          │    │                               already in the state it asks for); model_loaded,
          │    │                               model_configured (a removal refused); pull_in_progress
          │    ├── RequestTooLarge         413 request_too_large (the body, refused before it is read)
          │    └── ConfigRefused           422 invalid_config (a reload found the config file invalid)
          ├── EndpointNotImplemented  501 an API route this server does not implement (yet)
          ├── PullFailed              a pull job failed: 404 not_found, 502 download_failed, 507 disk_full
          └── ServiceError            the server cannot serve it now; the same request may succeed later
               ├── QueueFull               429 the model's queue is full (Retry-After)
               ├── WorkerUnavailable       503 the model's worker is starting, restarting or stopped
               ├── InsufficientMemory      507 loading the model would exceed the memory budget
               ├── WorkerCrashed           503 the worker died while serving this request
               ├── GenerationTimeout       504 no token for longer than the inter-token timeout
               └── ServerShuttingDown      503 the server is stopping

Workers report failures as ``proto.Failed(code, message)``; ``failure_to_error`` turns the code back
into the exception here, the one place where the translation happens.
"""

from __future__ import annotations

from typing import Any


class LmxError(Exception):
    """Base of every error raised on purpose by Opta-LMX."""


class ConfigError(LmxError):
    pass


class ProtocolError(LmxError):
    pass


class ModelStoreError(LmxError):
    """``status`` is the HTTP status an API answering with this error uses."""

    status: int = 400


class UnsupportedModel(ModelStoreError):
    status = 422


class LocalModelNotFound(ModelStoreError):
    status = 404


class ModelInUse(ModelStoreError):
    status = 409


class DownloadError(ModelStoreError):
    status = 502


class ApiError(LmxError):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {}


class RequestError(ApiError):
    status = 400
    type = "invalid_request_error"


class InvalidRequest(RequestError):
    code = "invalid_request"


class UnsupportedParameter(RequestError):
    code = "unsupported_parameter"


class ContextLengthExceeded(RequestError):
    code = "context_length_exceeded"


class Unauthorized(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RequestError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class PullNotFound(RequestError):
    status = 404
    code = "pull_not_found"


class StateConflict(RequestError):
    """The code says which state (``already_started``, ``not_running``, ``model_loaded``...):
    set per instance."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RequestTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class ConfigRefused(RequestError):
    status = 422
    code = "invalid_config"


class EndpointNotImplemented(ApiError):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"


class PullFailed(ApiError):
    """A pull job ended without a model; ``code`` and ``status`` from the job's ``error``."""

    type = "server_error"
    _STATUS = {"not_found": 404, "disk_full": 507, "cancelled": 409, "download_failed": 502}

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = self._STATUS.get(code, 500)
        if self.status < 500:
            self.type = "invalid_request_error"


class ServiceError(ApiError):
    status = 503
    type = "server_error"
    retry_after: int = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(ServiceError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class WorkerUnavailable(ServiceError):
    code = "model_unavailable"


class InsufficientMemory(ServiceError):
    status = 507
    code = "insufficient_memory"
    retry_after = 30


class WorkerCrashed(ServiceError):
    code = "worker_crashed"


class GenerationTimeout(ServiceError):
    status = 504
    code = "generation_timeout"


class ServerShuttingDown(ServiceError):
    code = "server_shutdown"
    retry_after = 5


class EngineFailure(ApiError):
    """The engine raised while generating: a bug or resource problem, not the client's fault."""

    status = 500
    code = "engine_error"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        UnsupportedParameter,
        ContextLengthExceeded,
        ModelNotFound,
        RequestTooLarge,
        QueueFull,
        WorkerUnavailable,
        InsufficientMemory,
        WorkerCrashed,
        GenerationTimeout,
        ServerShuttingDown,
        EngineFailure,
    )
    if cls.code is not None
}

FAILURE_CODES = frozenset(_BY_CODE)


def failure_to_error(code: str, message: str) -> ApiError:
    """The exception for a worker's ``Failed(code, message)``; unknown codes are engine failures."""
    return _BY_CODE.get(code, EngineFailure)(message)
