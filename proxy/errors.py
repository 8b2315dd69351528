"""One error tree for everything quotagate answers itself.

Each class fixes the HTTP status, OpenAI's ``type``/``code`` (conventions.md section 1) and the request's
outcome (proxy/outcomes.py); ``render`` is the only place that turns an error into bytes (a protocol with
another error shape brings its own renderer, proxy/protocols/)::

    ProxyError                                                                   outcome
    ├── AuthenticationError        401  invalid_api_key | null                   unauthorized
    ├── PermissionDenied           403                                           invalid_request
    ├── NotFound                   404                                           invalid_request
    │   └── ModelNotFound          404  model_not_found                          invalid_request
    ├── InvalidRequest             400  (code varies)                            invalid_request
    │   ├── InvalidJSON            400  invalid_json                             invalid_request
    │   └── ContextLengthExceeded  400  context_length_exceeded, param=...       context_rejected
    ├── BodyTooLarge               413  request_too_large                        invalid_request
    ├── BudgetExceeded             429  insufficient_quota   + x-should-retry    budget_exceeded
    ├── RateLimited                429  rate_limit_exceeded  + retry-after, ... rate_limited
    ├── StoreUnavailable           503  store_unavailable                        store_unavailable
    ├── UpstreamError              (upstream status, normalised body)            upstream_error
    ├── UpstreamUnreachable        502                                           upstream_error
    └── UpstreamTimeout            504                                           upstream_error
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from .outcomes import Outcome


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    limit: str | None = None  # a refusal's limit in a few words, for the log line (never sent to the client)
    outcome: ClassVar[Outcome] = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param
        self.headers: dict[str, str] = headers or {}

    @property
    def error_type(self) -> str:
        """What the metrics and the request log call the error: its code, else its type."""
        return self.code or self.type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class AuthenticationError(ProxyError):
    status = 401
    type = "invalid_request_error"
    outcome = "unauthorized"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    param = "messages"
    outcome = "context_rejected"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    outcome = "budget_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, downgrade_to: str | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "x-should-retry": "false"})
        self.downgrade_to = downgrade_to  # the refusing budget's cheaper model, tried before refusing


class RateLimited(ProxyError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    outcome = "rate_limited"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.type = kind  # "tokens" | "requests", as OpenAI does


class StoreUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "store_unavailable"
    outcome = "store_unavailable"


class UpstreamUnreachable(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_unreachable"
    outcome = "upstream_error"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    outcome = "upstream_error"


class UpstreamError(ProxyError):
    """An error answered by the provider: its status is kept, its body normalised to OpenAI's shape."""

    outcome = "upstream_error"

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or f"Upstream error {status}"))
        self.status = status
        self.type = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
        code = error.get("code")
        self.code = None if code is None else str(code)
        param = error.get("param")
        self.param = None if param is None else str(param)
        # what else the provider said about it (Azure's `innererror` with its content-filter results...)
        self.extra = {k: v for k, v in error.items() if k not in _ENVELOPE}

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"].update(self.extra)
        return body

    @property
    def error_type(self) -> str:
        """By status: the "Errors by type" panel tells a 429 storm from a 500 one."""
        return f"upstream_{self.status}"


_ENVELOPE = frozenset({"message", "type", "param", "code", "object"})  # "object": SGLang's flat shape


def normalise_upstream_error(status: int, raw: bytes) -> UpstreamError:
    """OpenAI, vLLM (int code), SGLang (flat) and Anthropic error bodies -> OpenAI's shape."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    error: dict[str, Any]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = dict(body["error"])  # OpenAI, vLLM, Anthropic ({"type":"error","error":{type,message}})
    elif isinstance(body, dict) and "message" in body:
        error = dict(body)  # SGLang's flat shape
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        error = {"message": body["error"]}  # Ollama and friends
    else:
        text = raw[:500].decode("utf-8", "replace").strip() if raw else ""
        error = {"message": text or f"Upstream returned HTTP {status}"}
    if isinstance(error.get("code"), int):
        error["code"] = None  # vLLM/SGLang put the HTTP status here; OpenAI's code is a string or null
    return UpstreamError(status, error)


def render(err: ProxyError) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", **err.headers}
    return err.status, headers, orjson.dumps(err.body())


def sse_error(err: ProxyError) -> bytes:
    """An error inside a stream that has already started (conventions.md 1.4)."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"
