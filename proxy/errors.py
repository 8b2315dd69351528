"""One error tree for everything quotagate answers itself.

Each class fixes the HTTP status and OpenAI's ``type``/``code`` (conventions.md section 1); ``render``
is the only place that turns an error into bytes::

    ProxyError
    ├── AuthenticationError        401  invalid_api_key | null
    ├── PermissionDenied           403
    ├── NotFound                   404
    │   └── ModelNotFound          404  model_not_found
    ├── InvalidRequest             400  (code varies)
    │   ├── InvalidJSON            400  invalid_json
    │   └── ContextLengthExceeded  400  context_length_exceeded, param=messages | prompt | input
    ├── BodyTooLarge               413  request_too_large
    ├── BudgetExceeded             429  insufficient_quota   + x-should-retry: false
    ├── RateLimited                429  rate_limit_exceeded  + retry-after, x-ratelimit-*
    ├── StoreUnavailable           503  store_unavailable
    ├── UpstreamError              (upstream status, normalised body)
    ├── UpstreamUnreachable        502
    └── UpstreamTimeout            504
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    limit: str | None = None  # a refusal's limit in a few words, for the log line (never sent to the client)

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

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class AuthenticationError(ProxyError):
    status = 401
    type = "invalid_request_error"


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


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, downgrade_to: str | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "x-should-retry": "false"})
        self.downgrade_to = downgrade_to  # the refusing budget's cheaper model, tried before refusing


class RateLimited(ProxyError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.type = kind  # "tokens" | "requests", as OpenAI does


class StoreUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class UpstreamUnreachable(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


class UpstreamError(ProxyError):
    """An error answered by the provider: its status is kept, its body normalised to OpenAI's shape."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or f"Upstream error {status}"))
        self.status = status
        self.type = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
        code = error.get("code")
        self.code = None if code is None else str(code)
        param = error.get("param")
        self.param = None if param is None else str(param)


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
