"""A local Hugging Face checkpoint directory: what it is (`open_checkpoint`), and its weights streamed into
a Transformer built empty (`load_weights`).

The directory holds config.json, the weights as one model.safetensors or several shards listed in
model.safetensors.index.json, and perhaps generation_config.json. Its architecture picks the family
adapter (engine/families/) that turns config.json into a ModelConfig and names where each tensor goes.

Loading never holds a CPU copy of the model: shard by shard, tensor by tensor, each is read from its
(memory-mapped) file and copied into its place on the model's device, in the model's dtype, so the
extra memory is one tensor. Everything that can be checked is checked first (`check_weights`), from the
shards' headers and a model on the meta device: every tensor's place and shape, and every parameter
filled, before memory is taken or a weight read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families import Family, Placement, family_for
from engine.kernels import choose_expert_matmuls
from engine.model import Transformer

INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    architecture: str  # the config.json `architectures` name its family was chosen by
    family: Family
    config: dict[str, Any]  # config.json
    config_sha256: str
    shards: tuple[Path, ...]
    generation: dict[str, Any]  # generation_config.json ({} without one)

    @property
    def name(self) -> str:
        return self.path.name

    def model_config(self, **overrides: Any) -> ModelConfig:
        """The model config.json describes, named after the directory, with fields replaced (`layers=N`
        keeps the first N layers), validated."""
        unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown model setting '{unknown[0]}'")
        whole = self.family.model_config(self.config)
        cfg = replace(whole, name=self.name, **overrides)
        if cfg.layers > whole.layers:
            raise ConfigError(f"{self.name} has {whole.layers} layers; cannot keep {cfg.layers}")
        cfg.validate()
        return cfg

    def describe(self, dtype: torch.dtype) -> dict[str, Any]:
        """For the trace header: which checkpoint, never its weights."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "config_sha256": self.config_sha256,
            "dtype": str(dtype).removeprefix("torch."),
        }


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory's config and find its shards; nothing is loaded. Every problem is a
    ConfigError of one line naming the file."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"--model {path}: not a directory (a Hugging Face checkpoint directory is expected)")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{root}: no config.json (not a Hugging Face checkpoint directory)")
    raw = config_path.read_bytes()
    config = _json(config_path, raw)
    architecture, family = family_for(config)
    generation_path = root / "generation_config.json"
    generation = _json(generation_path, generation_path.read_bytes()) if generation_path.is_file() else {}
    return Checkpoint(root, architecture, family, config, hashlib.sha256(raw).hexdigest(), _shards(root), generation)


def _json(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return value


def _shards(root: Path) -> tuple[Path, ...]:
    """The safetensors files, as the index lists them (each checked to be there), or the one file."""
    index_path = root / INDEX
    if index_path.is_file():
        weight_map = _json(index_path, index_path.read_bytes()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index_path}: no weight_map")
        files = sorted({str(f) for f in weight_map.values()})
        for name in files:
            if not (root / name).is_file():
                tensor = next(t for t, f in weight_map.items() if f == name)
                raise ConfigError(f"{root}: shard {name} is missing ({INDEX} lists {tensor} in it)")
        return tuple(root / name for name in files)
    single = root / "model.safetensors"
    if single.is_file():
        return (single,)
    found = sorted(root.glob("*.safetensors"))
    if not found:
        raise ConfigError(f"{root}: no *.safetensors weights (only safetensors checkpoints are read)")
    return tuple(found)


# --- weights ----------------------------------------------------------------------------------------


def check_weights(checkpoint: Checkpoint, cfg: ModelConfig) -> None:
    """Every tensor's place and shape, and every parameter filled, from the shards' headers alone,
    against a model on the meta device: nothing is read but the headers and nothing is allocated, so
    a broken checkpoint is refused before minutes of loading (or a trace file) are spent on it."""
    meta = torch.device("meta")
    model = Transformer(
        cfg, meta, torch.float32, seed=None, expert_matmuls=choose_expert_matmuls(cfg, meta, torch.float32, False)
    )
    _fill(model, checkpoint, None)


def load_weights(model: Transformer, checkpoint: Checkpoint, progress: bool | None = None) -> None:
    """Fill `model` (built with no seed: empty) from the checkpoint's shards. `progress`: show a bar on
    stderr (default: when stderr is a terminal)."""
    with _progress(checkpoint, progress) as advance, torch.no_grad():
        _fill(model, checkpoint, advance)


def _fill(model: Transformer, checkpoint: Checkpoint, advance: Callable[[int], None] | None) -> None:
    """Place every tensor of the checkpoint in `model`, checking it; copy it there unless `advance` is
    None (a check only). `advance` is told the bytes of each tensor read."""
    from safetensors import SafetensorError

    cfg, family = model.cfg, checkpoint.family
    targets: dict[str, torch.Tensor] = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    filled = dict.fromkeys(dict(model.named_parameters()), 0)
    placed: set[tuple[str, str]] = set()
    for shard in checkpoint.shards:
        # read to the host one tensor at a time (the file is mapped, not read whole); copy_ takes it
        # to the parameter's device and dtype in one step
        try:
            f = _open_shard(shard)
        except SafetensorError as error:
            raise ConfigError(f"{shard.name}: not a readable safetensors file ({error})") from None
        with f:
            for key in f.keys():
                places = _places(family, key, cfg, shard, checkpoint.architecture)
                header = f.get_slice(key)
                shape = tuple(header.get_shape())
                views = [_view(targets, place, key, shape, shard) for place in places]
                for place, view in zip(places, views):
                    where = (place.param, repr(place.index))
                    if where in placed:
                        raise ConfigError(f"{shard.name}: tensor {key} fills {place.param} a second time")
                    placed.add(where)
                    if place.param in filled:
                        filled[place.param] += view.numel()
                if advance is not None:
                    if views:
                        tensor = f.get_tensor(key)
                        for place, view in zip(places, views):
                            view.copy_(tensor.T if place.transpose else tensor)
                        del tensor
                    advance(_nbytes(shape, header.get_dtype()))
    if filled.get("lm_head") == 0 and checkpoint.config.get("tie_word_embeddings") and model.embed is not None:
        assert model.lm_head is not None
        if advance is not None:
            model.lm_head.copy_(model.embed)
        filled["lm_head"] = model.lm_head.numel()
    for name, param in model.named_parameters():
        if filled[name] != param.numel():
            raise ConfigError(
                f"{checkpoint.path}: no tensor filled {name} "
                f"({filled[name]:,} of {param.numel():,} values): the checkpoint lacks a weight its config needs"
            )


def _open_shard(shard: Path) -> Any:
    from safetensors import safe_open

    return safe_open(str(shard), framework="pt")


def _places(family: Family, key: str, cfg: ModelConfig, shard: Path, architecture: str) -> list[Placement]:
    places = family.placements(key, cfg)
    if places is not None:
        return places
    if any(re.fullmatch(pattern, key) for pattern in family.ignorable):
        return []
    raise ConfigError(f"{shard.name}: tensor {key} is not a weight of {architecture} that tickscope knows")


def _view(targets: dict[str, torch.Tensor], place: Placement, key: str, shape: tuple[int, ...], shard: Path) -> Any:
    """The part of our parameter that `key` fills, its shape checked against the tensor's."""
    target = targets.get(place.param)
    if target is None:
        raise ConfigError(f"{shard.name}: tensor {key} has no place here ({place.param} is not in this model)")
    try:
        view = target[place.index]
    except IndexError:
        raise ConfigError(
            f"{shard.name}: tensor {key} does not fit {place.param} {tuple(target.shape)} as config.json shapes it"
        ) from None
    expected = tuple(view.shape[::-1] if place.transpose else view.shape)
    if shape != expected:
        raise ConfigError(f"{shard.name}: tensor {key} has shape {list(shape)}; config.json makes it {list(expected)}")
    return view


_ITEMSIZE = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "BF16": 2, "F16": 2, "I16": 2}


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = _ITEMSIZE.get(dtype, 1)
    for d in shape:
        n *= d
    return n


@contextlib.contextmanager
def _progress(checkpoint: Checkpoint, show: bool | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of the bytes read, on stderr (by default only when it is a terminal); yields
    what advances it."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"loading [bold]{checkpoint.name}[/]"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not (sys.stderr.isatty() if show is None else show),
        transient=True,
    )
    task = bar.add_task("load", total=sum(shard.stat().st_size for shard in checkpoint.shards))
    with bar:
        yield lambda n: bar.advance(task, n)
