"""``config.pbtxt`` through Triton's protobuf schema: a misspelt field fails when the config is built."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from . import contract as C
from .registry import ModelInfo


def io_tensor(spec: C.TensorSpec, kind):
    msg = kind(name=spec.name, data_type=mc.DataType.Value(f"TYPE_{spec.dtype}"), dims=list(spec.dims))
    if kind is mc.ModelInput:
        if spec.ragged:
            msg.allow_ragged_batch = True
        if spec.optional:
            msg.optional = True
    return msg


def output_dim(info: ModelInfo) -> int:
    """The last dimension of vector outputs in configs: variable when requests may pick a size."""
    return -1 if info.matryoshka_dimensions else info.dim


def model_card_parameter(info: ModelInfo) -> str:
    return info.to_json()


def stage_config(
    name: str,
    spec: C.StageSpec,
    *,
    max_batch_size: int,
    parameters: dict[str, str],
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
    max_queue_delay_us: int = 0,
    outputs: tuple[C.TensorSpec, ...] | None = None,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size if spec.batching else 0)
    config.input.extend(io_tensor(t, mc.ModelInput) for t in spec.inputs)
    config.output.extend(io_tensor(t, mc.ModelOutput) for t in (outputs or spec.outputs))
    if spec.batching:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.Kind.Value(instance_kind)
    group.count = instance_count
    for key in sorted(parameters):
        config.parameters[key].string_value = parameters[key]
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
