"""Architectures as data: one YAML file per model under ``models/configs``.

``list_models()`` names them, ``model_config(name, overrides)`` resolves one (a registered
name or a path to a YAML file) with ``key.sub=value`` strings or nested-dict overrides, and
``create_model(name, **overrides)`` builds the recipe's model from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_CONFIG_PACKAGE = "cxrvlp.models.configs"
_SUFFIX = ".yaml"


def _config_files() -> dict[str, Any]:
    folder = resources.files(_CONFIG_PACKAGE)
    return {
        entry.name.removesuffix(_SUFFIX): entry
        for entry in folder.iterdir()
        if entry.name.endswith(_SUFFIX)
    }


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_config_files())


def model_config(
    name: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> DictConfig:
    """The architecture config of ``name`` (registered name or YAML path), overrides applied.

    ``overrides`` is a list of ``key.sub=value`` strings or a (nested) mapping. A key the
    config does not have is an error, so a typo never silently does nothing.
    """
    files = _config_files()
    if str(name) in files:
        config = OmegaConf.create(files[str(name)].read_text(encoding="utf-8"))
    elif Path(name).is_file():
        config = OmegaConf.load(Path(name))
    else:
        raise KeyError(
            f"unknown model {str(name)!r}: choose one of {', '.join(list_models())} "
            "(`cxrvlp models` lists them) or pass the path of a model YAML file"
        )
    if not isinstance(config, DictConfig) or "recipe" not in config:
        raise ValueError(f"model config {name} must be a mapping with a 'recipe' key")
    return apply_overrides(config, overrides)


def apply_overrides(
    config: DictConfig, overrides: Sequence[str] | Mapping[str, Any] | None
) -> DictConfig:
    """``config`` with ``key.sub=value`` strings or a nested mapping merged in (struct mode)."""
    if not overrides:
        return config
    OmegaConf.set_struct(config, True)
    if isinstance(overrides, Mapping):
        patch = OmegaConf.create(dict(overrides))
    else:
        malformed = [item for item in overrides if "=" not in item]
        if malformed:
            raise ValueError(f"overrides must look like key.sub=value, got {malformed}")
        patch = OmegaConf.from_dotlist(list(overrides))
    try:
        merged = OmegaConf.merge(config, patch)
    except Exception as error:  # omegaconf raises its own ConfigKeyError / ValidationError
        raise KeyError(f"cannot apply overrides {overrides}: {error}") from error
    OmegaConf.set_struct(merged, False)
    return merged  # type: ignore[return-value]


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """A config value that must be one of ``choices``: an error naming the key otherwise."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def create_model(name: str | Path, vocab_size: int | None = None, **overrides: Any):
    """Build the model of ``name``; ``overrides`` are nested keys, e.g. ``gk={"enabled": False}``.

    ``vocab_size`` is the tokenizer's size (defaults to ``text.vocab_size`` of the config).
    """
    config = model_config(name, overrides)
    return model_from_config(config, vocab_size=vocab_size)


# Recipe name (a model config's ``recipe``) -> the module that builds it. A recipe module
# defines ``MODEL`` (the nn.Module class, built as ``MODEL(config, vocab_size=...)``),
# ``attach_prompts(model, tokenizer)`` (the text the model encodes once: knowledge prompts,
# tag names) and ``collator(model, tokenizer, training)`` (samples -> its batch contract).
RECIPES = {
    "gkmvlp": "cxrvlp.recipes.gkmvlp",
    "asg": "cxrvlp.recipes.asg",
}


def recipe(name: str) -> Any:
    """The recipe module of ``name`` (see ``RECIPES``)."""
    import importlib

    if name not in RECIPES:
        raise ValueError(
            f"model config names recipe {name!r}; this version builds: {', '.join(RECIPES)}"
        )
    return importlib.import_module(RECIPES[name])


def model_from_config(config: DictConfig, vocab_size: int | None = None):
    return recipe(str(config.recipe)).MODEL(config, vocab_size=vocab_size)


def attach_prompts(model: Any, tokenizer: Any) -> None:
    """Let ``model`` encode the fixed text its recipe needs, with ``tokenizer``."""
    recipe(str(model.config.recipe)).attach_prompts(model, tokenizer)


def collator(model: Any, tokenizer: Any, training: bool = True) -> Any:
    """The collate function of ``model``'s recipe (``training=False``: what evaluations
    read, without training-only inputs)."""
    return recipe(str(model.config.recipe)).collator(model, tokenizer, training)
