"""A small, strict fake of ``triton_python_backend_utils`` for driving the adapters without a server.

The real module is provided by Triton's Python-backend stub (``pb_stub.cc`` binds ``Tensor``,
``InferenceRequest``, ``InferenceResponse``, ``TritonError``, ``Logger``; the pure-Python half is
``triton_python_backend_utils.py``).  This fake keeps the same call shapes and refuses what the real
one documents as invalid, unlike a ``MagicMock`` that accepts anything:

* ``Tensor(name, array)``: a numpy array of a dtype with a Triton data type (``numpy_to_triton_type``:
  object or ``bytes_`` arrays for ``TYPE_STRING``); ``name()`` and ``as_numpy()`` are methods, as in
  the real binding.
* ``InferenceRequest(inputs, requested_output_names=..., parameters=...)``: ``parameters()`` returns
  the JSON string Triton hands a model (scalar values only), ``requested_output_names()`` a list.
* ``InferenceResponse(output_tensors=None, error=None)``: ``output_tensors()``, ``has_error()``,
  ``error()``.
* ``TritonError(message, code=TritonError.INTERNAL)``: ``message()``, ``code()``; the codes are the
  integers of ``TRITONSERVER_Error_Code`` in ``tritonserver.h`` (UNKNOWN=0 ... CANCELLED=7), which the
  stub exposes as ``TritonError.<NAME>``.  It is not an exception (the real class is not either).
* ``TritonModelException``: the exception ``initialize``/``execute`` raise to fail a model.
* ``Logger.log_info/log_warn/log_error/log_verbose`` (static) record into ``Logger.records``.

Not faked: BLS (``InferenceRequest.exec``), decoupled response senders, DLPack, GPU tensors.

Use :func:`installed` to put the fake in ``sys.modules`` while importing adapters.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

MODULE_NAME = "triton_python_backend_utils"
ADAPTER_PACKAGE = "python_backend_models.triton"

# TRITONSERVER_Error_Code (triton/core/tritonserver.h), in declaration order.
UNKNOWN = 0
INTERNAL = 1
NOT_FOUND = 2
INVALID_ARG = 3
UNAVAILABLE = 4
UNSUPPORTED = 5
ALREADY_EXISTS = 6
CANCELLED = 7
_CODE_NAMES = {
    UNKNOWN: "UNKNOWN",
    INTERNAL: "INTERNAL",
    NOT_FOUND: "NOT_FOUND",
    INVALID_ARG: "INVALID_ARG",
    UNAVAILABLE: "UNAVAILABLE",
    UNSUPPORTED: "UNSUPPORTED",
    ALREADY_EXISTS: "ALREADY_EXISTS",
    CANCELLED: "CANCELLED",
}

# numpy dtypes with a Triton data type (triton_python_backend_utils.numpy_to_triton_type).
_TRITON_DTYPES = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.object_): "TYPE_STRING",
}


class TritonModelException(Exception):
    """Raised by a model to fail ``initialize`` or a whole ``execute`` call."""


class TritonError:
    """A per-response error: ``TritonError(message, code)``; codes as in ``tritonserver.h``."""

    UNKNOWN = UNKNOWN
    INTERNAL = INTERNAL
    NOT_FOUND = NOT_FOUND
    INVALID_ARG = INVALID_ARG
    UNAVAILABLE = UNAVAILABLE
    UNSUPPORTED = UNSUPPORTED
    ALREADY_EXISTS = ALREADY_EXISTS
    CANCELLED = CANCELLED

    def __init__(self, message: str, code: int = INTERNAL):
        if not isinstance(message, str):
            raise TypeError(f"TritonError message must be a str, got {type(message).__name__}")
        if isinstance(code, bool) or not isinstance(code, int) or code not in _CODE_NAMES:
            raise TypeError(f"TritonError code must be one of {sorted(_CODE_NAMES)}, got {code!r}")
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {_CODE_NAMES[self._code]})"


@dataclass(frozen=True, eq=False)
class Tensor:
    """``Tensor(name, numpy_array)``; ``name()`` and ``as_numpy()`` as in the real binding."""

    tensor_name: str
    array: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.tensor_name, str) or not self.tensor_name:
            raise TypeError(f"Tensor name must be a non-empty str, got {self.tensor_name!r}")
        if not isinstance(self.array, np.ndarray):
            raise TypeError(f"Tensor {self.tensor_name!r}: expected a numpy array, got {type(self.array).__name__}")
        if self.array.dtype not in _TRITON_DTYPES and self.array.dtype.kind != "S":
            raise TypeError(f"Tensor {self.tensor_name!r}: numpy dtype {self.array.dtype} has no Triton data type")

    def name(self) -> str:
        return self.tensor_name

    def as_numpy(self) -> np.ndarray:
        return self.array

    def triton_dtype(self) -> str:
        return "TYPE_STRING" if self.array.dtype.kind == "S" else _TRITON_DTYPES[self.array.dtype]


class InferenceRequest:
    """One request as a model's ``execute`` receives it."""

    def __init__(
        self,
        inputs: list[Tensor],
        requested_output_names: list[str] | tuple[str, ...] = (),
        parameters: dict[str, Any] | str | None = None,
        request_id: str = "",
        model_name: str = "",
    ):
        if not all(isinstance(t, Tensor) for t in inputs):
            raise TypeError("InferenceRequest inputs must be Tensors")
        names = [t.name() for t in inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate input tensors {names}")
        if parameters is None:
            parameters = {}
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        for key, value in parameters.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, bool, float)):
                raise TypeError(f"request parameter {key!r}: Triton carries only scalar values, got {value!r}")
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._parameters = json.dumps(parameters)
        self._request_id = request_id
        self.model_name = model_name

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._request_id


class InferenceResponse:
    """``InferenceResponse(output_tensors=None, error=None)``."""

    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None):
        if output_tensors is not None and not all(isinstance(t, Tensor) for t in output_tensors):
            raise TypeError("InferenceResponse output_tensors must be a list of Tensors")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"InferenceResponse error must be a TritonError, got {type(error).__name__}")
        self._output_tensors = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._output_tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


class LogLevel:
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    VERBOSE = "VERBOSE"


class Logger:
    """Static logging methods; every message lands in ``Logger.records`` as ``(level, message)``."""

    records: list[tuple[str, str]] = []

    @staticmethod
    def log(message: str, level: str = LogLevel.INFO) -> None:
        Logger.records.append((level, str(message)))

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, LogLevel.VERBOSE)


def _drop_adapter_modules() -> None:
    for name in [m for m in sys.modules if m == ADAPTER_PACKAGE or m.startswith(ADAPTER_PACKAGE + ".")]:
        del sys.modules[name]


@contextlib.contextmanager
def installed() -> Iterator[Any]:
    """Make ``import triton_python_backend_utils`` return this module while the block runs.

    Adapter modules imported before (against another ``pb_utils``) are dropped on entry, and the ones
    imported inside the block are dropped on exit, so each user gets adapters bound to this fake.
    """
    this = sys.modules[__name__]
    saved = sys.modules.get(MODULE_NAME)
    _drop_adapter_modules()
    sys.modules[MODULE_NAME] = this
    Logger.records.clear()
    try:
        yield this
    finally:
        _drop_adapter_modules()
        if saved is None:
            sys.modules.pop(MODULE_NAME, None)
        else:
            sys.modules[MODULE_NAME] = saved
