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


def lone_surrogate(value: Any, path: str = "") -> APIError | None:
    """The error for the first string in a parsed request that is not valid Unicode, or None.

    JSON may spell a lone surrogate (``"\\ud800"``); Python keeps it in a ``str`` that cannot be encoded
    as UTF-8, so no tokenizer, Triton tensor or JSON answer could carry it.  ``value``: a pydantic model,
    or what its fields hold.
    """
    from pydantic import BaseModel

    if isinstance(value, str):
        if value.isascii():  # the common case, without building the bytes
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            field = path or "body"
            return APIError(f"{field} is not valid Unicode text: a lone surrogate U+{ord(value[exc.start]):04X} at "
                            f"character {exc.start}", param=field.split(".", 1)[0].split("[", 1)[0])
        return None
    if isinstance(value, BaseModel):
        items = list(value.__dict__.items()) + list((value.__pydantic_extra__ or {}).items())
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and (error := lone_surrogate(key, path or "body")) is not None:
            return error
        child = f"{path}{key}" if str(key).startswith("[") else (f"{path}.{key}" if path else str(key))
        if (error := lone_surrogate(item, child)) is not None:
            return error
    return None
