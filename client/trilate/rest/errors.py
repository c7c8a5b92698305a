"""vLLM's error envelope ``{"error": {"message", "type", "param", "code"}}`` and the exceptions mapped to it."""

from __future__ import annotations

import json
from typing import Any


class APIError(Exception):
    """An error answered in vLLM's envelope."""

    def __init__(self, message: str, status: int = 400, type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param = message, status, type, param


class RouteNotFound(Exception):
    """The model cannot serve this route: vLLM would not have registered it (FastAPI's plain 404)."""


def error_body(message: str, type: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": status}}


def error_response(message: str, type: str, status: int, param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, type, status, param), status_code=status)


def validation_message(exc) -> str:
    """A pydantic RequestValidationError as vLLM words it: a summary, then the errors as JSON."""
    errors = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()))
        errors.append({"type": err.get("type"), "loc": loc, "msg": err.get("msg")})
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
    return f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}: {summary} {json.dumps(errors)}"
