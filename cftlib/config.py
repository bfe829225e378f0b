"""Typed, validated parameters: `params.yaml` is read once, and a wrong key, type or value fails at
once with a message naming the file and the dotted key (nanoGPT-configurator style)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and key."""


SPLITS = ("train", "val", "test", "v2", "bg_conflict", "color_conflict", "pose", "rendition", "bg_random")


@dataclass(frozen=True)
class Base:
    seed: int = 0
    profile: str = "default"
    threads: int = 2

    def check(self, err):
        if self.profile not in ("default", "smoke", "paper"):
            err("profile", f"unknown profile {self.profile!r}; choose default, smoke or paper")
        if self.threads < 1:
            err("threads", "must be >= 1")


@dataclass(frozen=True)
class World:
    image_size: int = 48
    supersample: int = 2
    n_species: int = 10
    rho_bg: float = 0.9
    rho_color: float = 0.9
    noise: float = 0.03
    splits: dict = field(default_factory=lambda: dict(
        train=6000, val=1000, test=2000, v2=1000, bg_conflict=2000, color_conflict=1000,
        pose=1000, rendition=1000, bg_random=1000))
    chunk: int = 500

    def check(self, err):
        for key in ("rho_bg", "rho_color"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                err(key, f"{getattr(self, key)} outside [0, 1]")
        if self.n_species < 3:
            err("n_species", f"{self.n_species}: need at least 3 species (with 2, any part tells them apart)")
        if self.image_size < 16:
            err("image_size", f"{self.image_size}: need at least 16 px")
        if not 1 <= self.supersample <= 4:
            err("supersample", f"{self.supersample}: choose 1-4")
        if not 0.0 <= self.noise < 0.5:
            err("noise", f"{self.noise} outside [0, 0.5)")
        if self.chunk < 1:
            err("chunk", "must be >= 1")
        for name, n in self.splits.items():
            if name not in SPLITS:
                err(f"splits.{name}", f"unknown split; known: {', '.join(SPLITS)}")
            if type(n) is not int or n < 1:
                err(f"splits.{name}", f"{n!r}: need a positive integer image count")
        for name in ("train", "val", "test"):
            if name not in self.splits:
                err(f"splits.{name}", "missing; train, val and test are required")


@dataclass(frozen=True)
class Pretrain:
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: dict(
        patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0))
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.001
    weight_decay: float = 0.05
    warmup: float = 0.05
    label_smoothing: float = 0.1
    flip: bool = True

    def check(self, err):
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if self.lr <= 0:
            err("lr", "must be > 0")
        if not 0 <= self.warmup < 1:
            err("warmup", "fraction of steps in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            err("label_smoothing", "in [0, 1)")


@dataclass(frozen=True)
class Params:
    base: Base = field(default_factory=Base)
    world: World = field(default_factory=World)
    pretrain: Pretrain = field(default_factory=Pretrain)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is float:
        return type(value) in (int, float)  # YAML writes 1.0 as 1 often enough
    if hint is dict:
        return isinstance(value, dict)
    return type(value) is hint


def _build(cls: type, data: Any, where: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {prefix}{key!s}; known: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, value, where, f"{prefix}{f.name}.")
        elif not _type_ok(value, hint):
            raise ConfigError(f"{where}: {prefix}{f.name} must be {hint.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        else:
            values[f.name] = float(value) if hint is float else value
    obj = cls(**values)
    if hasattr(obj, "check"):
        def err(key: str, msg: str):
            raise ConfigError(f"{where}: {prefix}{key}: {msg}")
        obj.check(err)
    return obj


def _cross_check(p: Params, where: str) -> None:
    patch = p.pretrain.model_kwargs.get("patch_size")
    if isinstance(patch, int) and p.world.image_size % patch:
        raise ConfigError(f"{where}: world.image_size {p.world.image_size} is not divisible by "
                          f"pretrain.model_kwargs.patch_size {patch}")


def parse(data: dict, where: str = "<params>") -> Params:
    """Validate a parsed params mapping (all sections optional; defaults fill the rest)."""
    params = _build(Params, data or {}, where, "")
    _cross_check(params, where)
    return params


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(data, str(path))


def as_dict(obj: Any) -> dict:
    """Plain-dict view of a params section, for manifests and checkpoints."""
    return dataclasses.asdict(obj)
