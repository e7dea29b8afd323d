"""Errors in the OpenAI error format: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math
from typing import Any


class APIError(Exception):
    """An error answered in OpenAI's format: one the client caused or must react to, or (as
    InternalError) one it must be told of without a stack trace."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def __reduce__(self):  # survive pickling across Ray processes with all fields
        return (
            _rebuild,
            (type(self), self.message, self.param, self.code, self.status_code, self.headers),
        )


def _rebuild(cls, message, param, code, status_code, headers):
    return cls(message, param=param, code=code, status_code=status_code, headers=headers)


class InvalidRequest(APIError):
    pass


class ModelNotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, model: str, available: list[str]):
        super().__init__(
            f"The model '{model}' does not exist. Available models: {', '.join(sorted(available))}",
            param="model",
            code="model_not_found",
        )


class Overloaded(APIError):
    status_code = 503
    error_type = "server_error"


class EngineUnavailable(APIError):
    """The engine replica holding the request died or could not be reached; Serve replaces it."""

    status_code = 503
    error_type = "server_error"


class InternalError(APIError):
    status_code = 500
    error_type = "server_error"


class RequestTimeout(APIError):
    """The request ran past the gateway's request_timeout_s; its engine work was aborted."""

    status_code = 504
    error_type = "server_error"


class PayloadTooLarge(APIError):
    status_code = 413


class Unauthorized(APIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str, *, code: str = "invalid_api_key", **kwargs):
        super().__init__(message, code=code, **kwargs)


class PermissionDenied(APIError):
    status_code = 403
    error_type = "permission_error"


class RateLimited(APIError):
    """Over a tenant quota: 429 with Retry-After (whole seconds, at least 1)."""

    status_code = 429
    error_type = "rate_limit_error"


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
