"""Architecture name (HF ``architectures[0]``, or ``--hf-overrides``) -> the family that serves it.

Everything here reads only JSON and safetensors headers: the repository builder and the preprocess
stage use it without importing torch.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, CheckpointError, read_json_if_exists

LATE_INTERACTION = "late-interaction"
BI_ENCODER = "bi-encoder"


@dataclass(frozen=True)
class Family:
    """How an architecture is served: which encoder class, which backbone, which score."""

    name: str  # module in python_backend_models.families
    backbone: str  # transformers model_type of the backbone
    score_type: str
    tasks: tuple[str, ...]
    pooled: bool  # the encoder also returns one pooled vector per text


def _colbert(backbone: str) -> Family:
    return Family("colbert", backbone, LATE_INTERACTION, ("token_embed",), pooled=False)


ARCHITECTURES: dict[str, Family] = {
    "HF_ColBERT": _colbert("bert"),
    # vLLM's current name for the same model (its answerai-colbert-small-v1 example says
    # --hf-overrides '{"architectures": ["ColBERTModel"], "dim": 96}'); `dim` is read as the ColBERT size.
    "ColBERTModel": _colbert("bert"),
    "ColBERTModernBertModel": _colbert("modernbert"),
    # Matryoshka sizes (jina-colbert-v2 was trained for 128, 96, 64) come from the checkpoint's
    # config.json `matryoshka_dimensions`, as vLLM reads them, never from the architecture.
    "ColBERTJinaRobertaModel": _colbert("jina_xlmr"),
    "ColBERTLfm2Model": _colbert("lfm2"),
    "BertModel": Family("bi_encoder", "bert", BI_ENCODER, ("embed", "token_embed"), pooled=True),
    # What BAAI/bge-m3's config.json says: served, as by vLLM, as a plain embedding model (no extra heads).
    "XLMRobertaModel": Family("bi_encoder", "xlm-roberta", BI_ENCODER, ("embed", "token_embed"), pooled=True),
    # BAAI/bge-m3 says XLMRobertaModel; vLLM and trilate need this override to load its two extra heads.
    # SEED vLLM's /pooling default for it is token_embed (the ColBERT vectors), hence the order.
    "BgeM3EmbeddingModel": Family(
        "bge_m3", "xlm-roberta", BI_ENCODER, ("token_embed", "embed", "token_classify", "embed&token_classify"),
        pooled=True,
    ),
}


# config.json model_type(s) each backbone reads; Jina's rotary XLM-R says "xlm-roberta".
_MODEL_TYPES = {"jina_xlmr": ("xlm-roberta",)}


def _model_types(family: Family) -> tuple[str, ...]:
    return _MODEL_TYPES.get(family.backbone, (family.backbone,))


def _check_backbone(ckpt: Checkpoint, family: Family) -> None:
    model_type = ckpt.config.get("model_type")
    if model_type in _model_types(family):
        return
    fits = sorted(a for a, f in ARCHITECTURES.items() if model_type in _model_types(f))
    hint = (f"; architectures for a {model_type!r} backbone: {', '.join(fits)} — pick one with "
            "--hf-overrides '{\"architectures\": [\"NAME\"]}'") if fits else ""
    raise CheckpointError(
        f"{ckpt.architecture} needs a {family.backbone!r} backbone but {ckpt.path}/config.json says model_type "
        f"{model_type!r}{hint}"
    )


def family_for(architecture: str) -> Family:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(
            f"unknown architecture {architecture!r}; trilate serves: {known}. "
            "Pick one with --hf-overrides '{\"architectures\": [\"NAME\"]}'"
        ) from None


@dataclass(frozen=True)
class DenseLayer:
    """One projection layer: ``weight`` is (out, in); where its tensors live."""

    file: str  # path relative to the checkpoint
    weight_key: str
    bias_key: str | None
    in_features: int
    out_features: int
    activation: str  # "identity" | "tanh"


@dataclass(frozen=True)
class ModelInfo:
    """What the builder, the stages and the client need to know about one served model."""

    served_name: str
    path: str
    architecture: str
    family: str
    backbone: str
    score_type: str
    tasks: tuple[str, ...]
    dim: int
    hidden_size: int
    max_model_len: int
    do_lower_case: bool
    pooling: str  # "mean" | "cls": pooled vector of bi-encoders
    projection: tuple[DenseLayer, ...] = ()
    embedding_modes: bool = False  # ColBERT query/document conventions available
    has_pad_token: bool = True  # vLLM's score usage adds one token per pair when the tokenizer has one
    matryoshka_dimensions: tuple[int, ...] = ()  # `dimensions` a request may ask for
    pooled_dim: int | None = None  # size of the pooled vector (None: the model has none)
    sparse: bool = False  # per-position sparse weights (BGE-M3)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    # Cohere input_type -> text prefix (config.json task_instructions, else sentence-transformers prompts)
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def pooled(self) -> bool:
        """The encoder also returns one pooled vector per text."""
        return self.pooled_dim is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def resolved(self, repository_root: str | Path) -> "ModelInfo":
        """This card with a relative checkpoint ``path`` (as a built repository stores it) made absolute
        against the repository it was read from."""
        path = Path(self.path)
        if path.is_absolute():
            return self
        return replace(self, path=str((Path(repository_root) / path).resolve()))

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        data = json.loads(text)
        data.pop("pooled", None)  # cards written before it became derived
        data["tasks"] = tuple(data["tasks"])
        data["matryoshka_dimensions"] = tuple(data.get("matryoshka_dimensions", ()))
        data["projection"] = tuple(DenseLayer(**layer) for layer in data["projection"])
        return cls(**data)


def safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header alone."""
    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}
_DENSE_TYPES = {"sentence_transformers.models.Dense", "pylate.models.Dense.Dense", "sentence_transformers.models.Dense.Dense"}


def _st_dense_layers(ckpt: Checkpoint) -> list[DenseLayer]:
    """sentence-transformers / PyLate Dense modules listed in ``modules.json``, in order."""
    layers = []
    for module in ckpt.st_modules():
        if module.get("type") not in _DENSE_TYPES:
            continue
        folder = ckpt.path / module["path"]
        cfg = read_json_if_exists(folder / "config.json") or {}
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no model.safetensors (trilate loads safetensors only)")
        shapes = safetensors_shapes(weights)
        weight_key = next((k for k in ("linear.weight", "weight", "dense.weight") if k in shapes), None)
        if weight_key is None:
            raise CheckpointError(f"{weights} has no linear.weight / weight / dense.weight tensor")
        bias_key = weight_key.replace("weight", "bias")
        act_name = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if act_name not in _ACTIVATIONS:
            raise CheckpointError(f"{folder}: unsupported Dense activation {act_name!r}")
        if cfg.get("use_residual"):
            raise CheckpointError(f"{folder}: Dense with use_residual is not supported")
        out_f, in_f = shapes[weight_key]
        layers.append(
            DenseLayer(
                file=str(weights.relative_to(ckpt.path)),
                weight_key=weight_key,
                bias_key=bias_key if (cfg.get("bias", True) and bias_key in shapes) else None,
                in_features=in_f,
                out_features=out_f,
                activation=_ACTIVATIONS[act_name],
            )
        )
    return layers


def _main_file_projection(ckpt: Checkpoint) -> DenseLayer | None:
    """A ColBERT ``linear.weight`` inside the main checkpoint (Stanford layout)."""
    main = ckpt.path / "model.safetensors"
    if not main.is_file():
        return None
    shapes = safetensors_shapes(main)
    for key in sorted(shapes):
        bare = key
        for prefix in ("model.", "bert.", "roberta."):
            bare = bare.removeprefix(prefix)
        if bare in ("linear.weight", "colbert_linear.weight"):
            out_f, in_f = shapes[key]
            return DenseLayer("model.safetensors", key, None, in_f, out_f, "identity")
    return None


def _max_model_len(ckpt: Checkpoint, requested: int | None) -> int:
    """The model's limit: its position table (a hard limit), capped by sentence-transformers'
    ``max_seq_length`` unless ``--max-model-len`` asks for more (up to the hard limit)."""
    config = ckpt.config
    candidates = [config.get(k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")]
    hard = next((int(v) for v in candidates if isinstance(v, int) and v > 0), None)
    absolute = config.get("position_embedding_type", "absolute") == "absolute"
    if hard is not None and absolute and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        hard -= 2  # positions start after the padding index
    st_cfg = read_json_if_exists(ckpt.path / "sentence_bert_config.json") or {}
    default = hard
    if isinstance(st_cfg.get("max_seq_length"), int):
        default = min(hard, st_cfg["max_seq_length"]) if hard else st_cfg["max_seq_length"]
    if default is None:
        default = 512
    if requested is None:
        return default
    limit = hard or default
    if requested < 1 or requested > limit:
        raise CheckpointError(
            f"--max-model-len {requested} is out of range for {ckpt.path.name}: the model's limit is {limit} tokens"
        )
    return requested


def _bge_m3_colbert_dim(ckpt: Checkpoint, hidden: int) -> int:
    """Rows of ``colbert_linear.pt`` (BGE-M3's multi-vector head); needs torch to read the .pt file."""
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        if not (ckpt.path / name).is_file():
            raise CheckpointError(
                f"{ckpt.path} has no {name}; BgeM3EmbeddingModel needs colbert_linear.pt and sparse_linear.pt "
                "beside the backbone, as BAAI/bge-m3 ships them"
            )
    from .checkpoint import load_torch_state_dict

    weight = load_torch_state_dict(ckpt.path / "colbert_linear.pt")["weight"]
    if weight.shape[1] != hidden:
        raise CheckpointError(f"{ckpt.path}/colbert_linear.pt expects {weight.shape[1]} inputs; hidden_size is {hidden}")
    return int(weight.shape[0])


def _matryoshka_dimensions(ckpt: Checkpoint, dim: int) -> tuple[int, ...]:
    """The output sizes a request may pick with `dimensions`: config.json's ``matryoshka_dimensions``
    (as vLLM reads it; none declared = not matryoshka, every `dimensions` refused)."""
    declared = ckpt.config.get("matryoshka_dimensions")
    if declared is None:
        return ()
    if not isinstance(declared, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in declared):
        raise CheckpointError(f"{ckpt.path}: matryoshka_dimensions must be a list of integers, got {declared!r}")
    wrong = [d for d in declared if not 1 <= d <= dim]
    if wrong:
        raise CheckpointError(f"{ckpt.path}: matryoshka_dimensions {wrong} are outside 1..{dim} (the model's output "
                              "size)")
    return tuple(declared)


def _prompts(ckpt: Checkpoint) -> dict[str, str]:
    """Prefixes by input type, as vLLM's /v2/embed reads them: config.json ``task_instructions`` when it is a
    non-empty mapping, else ``config_sentence_transformers.json`` ``prompts``; string values only."""
    for source in (ckpt.config.get("task_instructions"),
                   (read_json_if_exists(ckpt.path / "config_sentence_transformers.json") or {}).get("prompts")):
        if isinstance(source, dict) and source:
            return {k: v for k, v in source.items() if isinstance(k, str) and isinstance(v, str)}
    return {}


def _has_pad_token(path: Path) -> bool:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (read_json_if_exists(path / name) or {}).get("pad_token"):
            return True
    return False


def describe(
    ckpt: Checkpoint, served_name: str, *, max_model_len: int | None = None, hf_overrides: dict[str, Any] | None = None
) -> ModelInfo:
    """Read everything the serving stack needs from a checkpoint, or fail with the fix."""
    family = family_for(ckpt.architecture)
    _check_backbone(ckpt, family)
    config = ckpt.config
    if not any((ckpt.path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        pickled = [f for f in ("pytorch_model.bin", "model.bin") if (ckpt.path / f).is_file()]
        if pickled:
            raise CheckpointError(
                f"{ckpt.path} holds only pickled weights ({pickled[0]}); trilate loads safetensors only. "
                "Convert them once with safetensors.torch.save_file on a trusted machine."
            )
        raise CheckpointError(f"{ckpt.path} has no model.safetensors")
    hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
    st_cfg = read_json_if_exists(ckpt.path / "sentence_bert_config.json") or {}
    projection: list[DenseLayer] = []
    pooling = "mean"
    embedding_modes = False
    if family.score_type == LATE_INTERACTION:
        main = _main_file_projection(ckpt)
        projection = [main] if main is not None else _st_dense_layers(ckpt)
        if not projection:
            raise CheckpointError(
                f"{ckpt.path}: no ColBERT projection found (looked for linear.weight / colbert_linear.weight in "
                "model.safetensors, then Dense modules in modules.json)"
            )
        declared = next((config[k] for k in ("colbert_dim", "dim", "projection_dim") if config.get(k)), None)
        if declared is not None and int(declared) != projection[-1].out_features:
            raise CheckpointError(
                f"{ckpt.path}: config says the ColBERT dimension is {declared} (colbert_dim/dim/projection_dim) "
                f"but the projection weight gives {projection[-1].out_features}; fix it with "
                f"--hf-overrides '{{\"colbert_dim\": {projection[-1].out_features}}}'"
            )
        embedding_modes = (ckpt.path / "config_sentence_transformers.json").is_file() or (
            ckpt.path / "artifact.metadata"
        ).is_file()
    else:
        projection = _st_dense_layers(ckpt)
        for module in ckpt.st_modules():
            if module.get("type", "").endswith("Pooling"):
                pcfg = read_json_if_exists(ckpt.path / module["path"] / "config.json") or {}
                if pcfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not pcfg.get("pooling_mode_mean_tokens", True):
                    raise CheckpointError(f"{ckpt.path}: only mean and CLS pooling are supported")
    if projection and projection[0].in_features != hidden:
        raise CheckpointError(
            f"{ckpt.path}: projection expects {projection[0].in_features} inputs but hidden_size is {hidden}"
        )
    dim = projection[-1].out_features if projection else hidden
    if family.name == "bge_m3":
        dim = _bge_m3_colbert_dim(ckpt, hidden)
    return ModelInfo(
        served_name=served_name,
        path=str(ckpt.path),
        architecture=ckpt.architecture,
        family=family.name,
        backbone=family.backbone,
        score_type=family.score_type,
        tasks=family.tasks,
        dim=dim,
        hidden_size=hidden,
        max_model_len=_max_model_len(ckpt, max_model_len),
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
        pooling=pooling,
        projection=tuple(projection),
        embedding_modes=embedding_modes,
        has_pad_token=_has_pad_token(ckpt.path),
        pooled_dim=(hidden if family.name == "bge_m3" else dim) if family.pooled else None,
        sparse=family.name == "bge_m3",
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        matryoshka_dimensions=_matryoshka_dimensions(ckpt, dim),
        hf_overrides=dict(hf_overrides or {}),
        prompts=_prompts(ckpt),
    )
