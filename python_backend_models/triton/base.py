"""The Triton contract, written once.

* ``initialize(args)`` reads the model config's ``parameters`` (string values) and builds the core;
  a bad configuration fails loudly there, naming the model.
* ``execute(requests)`` returns exactly one response per request, in order.  A request that is wrong
  gets ``InferenceResponse(error=TritonError(msg, INVALID_ARG))`` and the others in the same dynamic
  batch still run; only a failure of the whole batch (e.g. out of memory) fails them all.
* Request parameters (``request.parameters()``, a JSON string) carry per-request options; ensembles
  forward them to every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from ..errors import InputError


class StageModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.model_name = args["model_name"]
        self.model_config = json.loads(args["model_config"])
        self.params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        self.instance_kind = args.get("model_instance_kind", "CPU")
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)
        # Triton passes this model's folder; the repository root is its parent.
        self.repository_root = Path(args.get("model_repository", ".")).parent
        self.log = pb_utils.Logger
        try:
            self.setup()
        except Exception as exc:
            raise pb_utils.TritonModelException(f"{self.model_name}: {type(exc).__name__}: {exc}") from exc

    def setup(self) -> None:
        """Build the core from ``self.params``."""

    def model_info(self):
        """The ``model_card`` parameter, its checkpoint path resolved against this repository."""
        from ..registry import ModelInfo

        return ModelInfo.from_json(self.params["model_card"]).resolved(self.repository_root)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._guarded(self.handle, request) for request in requests]

    def handle(self, request: Any) -> Any:
        raise NotImplementedError

    def _guarded(self, fn, *args) -> Any:
        try:
            return fn(*args)
        except InputError as exc:
            return error_response(str(exc))
        except Exception as exc:  # the request fails; the model keeps serving
            self.log.log_error(f"{self.model_name}: {type(exc).__name__}: {exc}")
            return error_response(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)

    def finalize(self) -> None:
        pass


def error_response(message: str, code: int | None = None) -> Any:
    if code is None:
        code = pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def request_parameters(request: Any) -> dict[str, Any]:
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def input_array(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InputError(f"missing input tensor {name!r}")
    return tensor.as_numpy()


def bool_param(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InputError(f"{name} must be a boolean, got {value!r}")


def int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r}") from None


def requested_outputs(request: Any) -> set[str]:
    return set(request.requested_output_names())
