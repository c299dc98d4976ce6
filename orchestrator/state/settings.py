"""Configs on disk: the packaged defaults and model configs, user YAML files, and the shipped models' folders."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from orchestrator.core.config import Config, merge_layers, validate
from orchestrator.core.errors import UserError

BUILTIN = "builtin:"


def resolve_model_path(path: str) -> str:
    """'builtin:NAME' is a model shipped in the package (models/NAME); anything else is used as given."""
    if path.startswith(BUILTIN):
        return str(Path(str(resources.files("orchestrator.models"))) / path[len(BUILTIN) :])
    return path


def packaged_config_dir() -> Path:
    """The folder holding default.yaml and model/*.yaml inside the installed package."""
    return Path(str(resources.files("orchestrator.configs")))


def model_names() -> list[str]:
    """Names accepted by --model besides a folder path."""
    return sorted(p.stem for p in (packaged_config_dir() / "model").glob("*.yaml"))


def read_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except Exception as err:  # YAML syntax errors come in many types
        raise UserError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from None


def load_config(
    files: list[str | Path] = (), overrides: list[str] = (), model: str | None = None,
    mappings: list[Mapping[str, Any]] = (),
) -> Config:
    """Merge packaged defaults, a --model choice, extra YAML files, mappings of keys (nested like the YAML) and
    `a.b=c` overrides, in that order; validate."""
    layers: list[Any] = [read_yaml(packaged_config_dir() / "default.yaml")]
    if model:
        layers.append(model_layer(model))
    layers += [read_yaml(Path(f)) for f in files] + list(mappings)
    config: Config = merge_layers(Config, layers, overrides)
    validate(config)
    return config


def model_layer(model: str) -> DictConfig:
    """The config layer for --model: a packaged model config (a full layer: model and the schedule it was
    trained for), or a diffusers folder path."""
    named = packaged_config_dir() / "model" / f"{model}.yaml"
    if named.is_file():
        return read_yaml(named)
    if Path(model).is_dir():
        return OmegaConf.create({"model": {"backend": "diffusers", "path": str(Path(model).resolve())}})
    raise UserError(
        f"--model '{model}' is neither a model config ({', '.join(model_names())}) nor an existing folder"
    )
