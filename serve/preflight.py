"""Checks of a plan's local checkpoints that need no engine: run before any process is started.

What is checked is what makes an engine fail only after Ray, Serve and vLLM have started: a
missing directory, a config.json that is not a JSON object with a `model_type` or that names no
generative architecture (vLLM would serve a pooling model that refuses generation), no weight
files, and safetensors files whose header is unreadable or whose tensors run past the end of
the file (truncated downloads). Hub ids that are not local paths are left to the engine.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from paliserve.spec import Plan

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# Architecture-name suffixes vLLM runs as generative models (vllm/config/model.py
# `_SUFFIX_TO_DEFAULTS`); any other name, or none, resolves to a pooling model, which loads and
# then refuses every generation request ("This model does not support generation").
GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel")
KNOWN_ARCHITECTURES = {"paligemma": "PaliGemmaForConditionalGeneration"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    def __init__(self, path: str | Path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"checkpoint {self.path}: {cause}")


def looks_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith(("/", "./", "../", "~"))


def check_checkpoint(model: str) -> None:
    """Raise CheckpointError naming `model` and the cause when a local checkpoint cannot load."""
    if not looks_local(model):
        return
    root = Path(model).expanduser()
    if not root.exists():
        raise CheckpointError(model, "does not exist")
    if not root.is_dir():
        raise CheckpointError(model, "is not a directory")
    _check_config(model, root / "config.json")
    weights = sorted(p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern))
    if not weights:
        raise CheckpointError(model, f"no weight files ({', '.join(WEIGHT_PATTERNS)})")
    _check_index(model, root)
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(model, path)


def check_plan(plan: Plan) -> list[CheckpointError]:
    errors = []
    for deployment in plan.deployments:
        try:
            check_checkpoint(deployment.engine_args.model)
        except CheckpointError as exc:
            errors.append(exc)
    return errors


def _check_config(model: str, path: Path) -> None:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(model, "has no config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(model, f"config.json is unreadable: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(model, f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(model, "config.json is not a model config (no model_type)")
    _check_architectures(model, config)


def _check_architectures(model: str, config: dict) -> None:
    architectures = config.get("architectures")
    expected = KNOWN_ARCHITECTURES.get(config["model_type"])
    fix = (f'add "architectures": ["{expected}"] to config.json' if expected
           else f"config.json needs an architecture ending in {' or '.join(GENERATIVE_SUFFIXES)}")  # fmt: skip
    if not architectures:
        raise CheckpointError(
            model, f"config.json has no `architectures`: vLLM would load it as a pooling model that refuses "
            f"generation; {fix}"
        )  # fmt: skip
    if isinstance(architectures, str):
        architectures = [architectures]
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointError(model, f"config.json `architectures` is not a list of names: {architectures!r}")
    if not any(a.endswith(GENERATIVE_SUFFIXES) for a in architectures):
        raise CheckpointError(
            model, f"config.json's architectures {architectures} are not generative: vLLM would serve them as a "
            f"pooling model that refuses generation; {fix}"
        )  # fmt: skip


def _check_index(model: str, root: Path) -> None:
    index = root / "model.safetensors.index.json"
    if not index.exists():
        return
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(model, f"{index.name} is not a weight index: {exc}") from None
    missing = sorted(s for s in shards if not (root / s).is_file())
    if missing:
        raise CheckpointError(model, f"{index.name} names missing shards: {', '.join(missing)}")


def _check_safetensors(model: str, path: Path) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{size} bytes, shorter than a header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ValueError(f"header length {header_len} does not fit the file's {size} bytes")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        end = max((int(t["data_offsets"][1]) for t in tensors), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(model, f"{path.name} is not a valid safetensors file: {exc}") from None
    if 8 + header_len + end != size:
        raise CheckpointError(
            model, f"{path.name} is truncated or corrupt: its header needs {8 + header_len + end} bytes, the file has {size}"
        )
