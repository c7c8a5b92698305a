"""Exceptions of the client library, each with the HTTP status and vLLM error type it maps to."""

from __future__ import annotations


class TrilateError(Exception):
    status: int = 500
    type: str = "InternalServerError"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInputError(TrilateError):
    """The request is wrong; nothing was computed for it."""

    status = 400
    type = "BadRequestError"


class UnsupportedTaskError(InvalidInputError):
    """The model does not do what was asked (e.g. pooled ``embed`` on a ColBERT model)."""


class ModelNotFoundError(TrilateError):
    status = 404
    type = "NotFoundError"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist.", param="model")
        self.model = model


class ServerUnavailableError(TrilateError):
    """The server cannot be reached or is not ready."""

    status = 503
    type = "ServiceUnavailableError"


class DeadlineExceededError(TrilateError):
    """The request's deadline (``TrilateClient.bounded``, the front end's ``--request-timeout``) passed."""

    status = 504
    type = "TimeoutError"


class RequestCancelledError(TrilateError):
    """The caller gave up on the request (a REST client that went away); nothing more is sent for it."""

    status = 499
    type = "ClientClosedRequest"
