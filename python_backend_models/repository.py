"""Build a Triton model repository from "serve this checkpoint under this name".

Nothing in the output is hand-edited: each stage folder holds a generated ``config.pbtxt`` and a
one-line ``model.py`` shim into ``python_backend_models.triton``; ensembles chain them.  The output is
deterministic, so building twice gives identical files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import contract as C
from .checkpoint import DEFAULT_MODEL, CheckpointError, open_checkpoint, resolve
from .config import output_dim, stage_config, to_pbtxt
from .registry import ModelInfo, describe

# Texts per Triton batch (the client library splits larger requests).
MAX_BATCH_SIZE = 256


@dataclass
class ServeSpec:
    """One model to serve, as given on the command line."""

    model: str = DEFAULT_MODEL
    served_name: str | None = None
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    max_model_len: int | None = None
    dtype: str = "auto"
    # Score/rerank encode side 1 as ColBERT queries and side 2 as documents (PyLate conventions).
    colbert_score_modes: bool = False
    # --chat-template: a Hugging Face style Jinja file for `messages` (and a cross-encoder's pairs); None = the
    # family's own (Nemotron VL) or the checkpoint's.
    chat_template: str | None = None

    @property
    def name(self) -> str:
        return self.served_name or self.model


@dataclass
class BuildOptions:
    device: str = "cpu"  # "cpu" | "gpu"
    encoder_instances: int = 1
    max_batch_tokens: int = 16384
    max_queue_delay_us: int = 0
    encoder_threads: int = 0  # torch threads per encoder instance; 0 = every core
    encoder_backend: str = "auto"  # one of ENCODER_BACKENDS (families.onnx_backbone)


# What runs an encoder's text backbone (``trilate serve --encoder-backend``; families.onnx_backbone.wants_onnx).
ENCODER_BACKENDS = ("auto", "torch", "onnx")

SHIM = "from python_backend_models.triton.{module} import {cls} as TritonPythonModel  # noqa: F401\n"


def _write_model(root: Path, config, adapter: str | None) -> None:
    folder = root / config.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")
    if adapter is not None:
        module, cls = adapter.split(":")
        (folder / "1" / "model.py").write_text(SHIM.format(module=module, cls=cls), encoding="utf-8")


def describe_spec(spec: ServeSpec) -> ModelInfo:
    path = resolve(spec.model)
    ckpt = open_checkpoint(path, spec.hf_overrides)
    info = describe(ckpt, spec.name, max_model_len=spec.max_model_len, hf_overrides=spec.hf_overrides)
    if spec.chat_template is not None:
        info = replace(info, chat_template=_checked_template(spec, info))
    if spec.colbert_score_modes and not info.embedding_modes:
        raise CheckpointError(
            f"{spec.name}: query/document scoring needs a ColBERT checkpoint with PyLate or Stanford conventions, or a "
            "ColQwen checkpoint (colpali-engine's conventions)"
        )
    return info


def _checked_template(spec: ServeSpec, info: ModelInfo) -> str:
    """The source of ``--chat-template``, checked now: a file that does not compile fails the build naming the
    line, and a cross-encoder's template must render a (query, document) pair, as every request will.  The card
    carries the text, so a moved repository (a container image) needs no copy of the file."""
    from .chat_templates import ChatTemplateError, load
    from .errors import InputError

    try:
        template = load(Path(spec.chat_template).expanduser())
        if info.cross_encoder:
            template.render([{"role": "query", "content": "q"}, {"role": "document", "content": "d"}])
    except (ChatTemplateError, InputError) as exc:
        raise CheckpointError(f"{spec.name}: --chat-template {spec.chat_template}: {exc}") from None
    return template.source


def model_configs(spec: ServeSpec, info: ModelInfo, options: BuildOptions):
    """(config, adapter) pairs for one served model's stages and ensembles."""
    from trilate_ensembles import score_ensemble, token_embed_ensemble

    name = C.triton_name(info.served_name)
    card = info.to_json()
    preprocess = C.stage_name(name, "preprocess")
    delay = options.max_queue_delay_us
    if info.cross_encoder:
        return cross_encoder_configs(spec, info, options)
    pre_spec = C.preprocess_spec(info.multimodal)
    configs = [(stage_config(preprocess, pre_spec, max_batch_size=MAX_BATCH_SIZE,
                             parameters={"model_card": card}, max_queue_delay_us=delay), pre_spec.adapter)]
    encoder_spec = C.encoder_spec(output_dim(info), info.pooled_dim, info.sparse, info.multimodal)
    configs.append(_encoder_config(name, spec, card, encoder_spec, options))
    if info.sparse:
        configs.append((stage_config(C.stage_name(name, "sparse"), C.SPARSE, max_batch_size=MAX_BATCH_SIZE,
                                     parameters={"model_card": card}, max_queue_delay_us=delay), C.SPARSE.adapter))
    query_pre = document_pre = preprocess
    if spec.colbert_score_modes:
        query_pre, document_pre = C.stage_name(name, "preprocess_query"), C.stage_name(name, "preprocess_document")
        for stage, mode in ((query_pre, "query"), (document_pre, "document")):
            configs.append((stage_config(stage, pre_spec, max_batch_size=MAX_BATCH_SIZE, max_queue_delay_us=delay,
                                         parameters={"model_card": card, "embedding_mode": mode}), pre_spec.adapter))
    configs.append((token_embed_ensemble(name, info, MAX_BATCH_SIZE), None))
    configs.append((score_ensemble(name, info, query_pre, document_pre), None))
    return configs


def _encoder_config(name: str, spec: ServeSpec, card: str, encoder: C.StageSpec, options: BuildOptions):
    return (stage_config(
        C.stage_name(name, "encoder"), encoder, max_batch_size=MAX_BATCH_SIZE,
        parameters={"model_card": card, "dtype": spec.dtype, "max_batch_tokens": str(options.max_batch_tokens),
                    "threads": str(options.encoder_threads), "backend": options.encoder_backend},
        instance_kind="KIND_GPU" if options.device == "gpu" else "KIND_CPU",
        instance_count=options.encoder_instances, max_queue_delay_us=options.max_queue_delay_us,
    ), encoder.adapter)


def cross_encoder_configs(spec: ServeSpec, info: ModelInfo, options: BuildOptions):
    """A cross-encoder serves scores only: pair preprocess -> encoder, behind ``<m>__score``."""
    from trilate_ensembles import cross_encoder_score_ensemble

    name = C.triton_name(info.served_name)
    card = info.to_json()
    pair, text = C.PAIR_PREPROCESS, C.preprocess_spec(True)
    delay = options.max_queue_delay_us
    return [
        (stage_config(C.stage_name(name, "pair_preprocess"), pair, max_batch_size=MAX_BATCH_SIZE,
                      parameters={"model_card": card}, max_queue_delay_us=delay), pair.adapter),
        # /tokenize of one text (the client library's tokenize call).
        (stage_config(C.stage_name(name, "preprocess"), text, max_batch_size=MAX_BATCH_SIZE,
                      parameters={"model_card": card}, max_queue_delay_us=delay), text.adapter),
        _encoder_config(name, spec, card, C.cross_encoder_spec(), options),
        (cross_encoder_score_ensemble(name, info), None),
    ]


def relocatable(info: ModelInfo, root: Path) -> ModelInfo:
    """``info`` with its checkpoint path relative to the repository root ``root``, as the configs store it:
    a repository moved together with its checkpoints (a container image) still finds them.  The stages
    resolve it against their own repository (``ModelInfo.resolved``)."""
    return replace(info, path=Path(os.path.relpath(Path(info.path).resolve(), root)).as_posix())


def build_repository(specs: list[ServeSpec], output: Path, options: BuildOptions | None = None) -> list[ModelInfo]:
    """Write every model's stages, ensembles and the shared scoring stages into ``output``."""
    options = options or BuildOptions()
    if not specs:
        specs = [ServeSpec()]
    infos = [describe_spec(spec) for spec in specs]
    names = [C.triton_name(i.served_name) for i in infos]
    if len(set(names)) != len(names):
        raise CheckpointError(f"served model names must be distinct, got {[i.served_name for i in infos]}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for child in output.iterdir():  # a previous build's models; other files are left alone
        if child.is_dir() and (child / "config.pbtxt").is_file():
            shutil.rmtree(child)
    root = output.resolve()
    for spec, info in zip(specs, infos):
        for config, adapter in model_configs(spec, relocatable(info, root), options):
            _write_model(output, config, adapter)
    for name, stage in C.SHARED_STAGES.items():
        _write_model(output, stage_config(name, stage, max_batch_size=0, parameters={}), stage.adapter)
    return infos
