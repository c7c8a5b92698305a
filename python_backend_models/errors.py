"""Errors shared by the cores and the adapters."""


class InputError(ValueError):
    """The request is wrong (Triton INVALID_ARG / HTTP 400); the message names what is wrong."""
