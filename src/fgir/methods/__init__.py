"""The method registry: a method is a name, a builder, its own config section and its checks.

Built-in methods register themselves at the bottom of their modules, which `fgir.methods.builtin`
imports; other packages add methods through the entry-point group `fgir.methods` (each entry point a
module that registers on import, or a callable that registers when called). Both load on the first
lookup, so importing fgir stays cheap. The engine only calls `build_model` and asks the model for
capabilities (`fgir.methods.capabilities`); it never looks inside a method.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from fgir.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the methods themselves, not by reading a config
    from torch import nn

ENTRY_POINT_GROUP = "fgir.methods"


@dataclass(frozen=True)
class MethodSpec:
    """What fgir knows of a method. `build(backbone, num_classes, model_config)` builds the model
    around a ViT `Backbone`; with `own_network`, `build(model_config, num_classes, pretrained)`
    builds a network of its own (a CNN). `config` is the dataclass of its YAML section
    `model.<section>`; `check(config, facts)` refuses settings the backbone cannot serve, before
    any work (`fgir.methods.checks.BackboneFacts`)."""

    name: str
    build: Callable[..., nn.Module]
    config: type | None = None
    section: str | None = None
    check: Callable[[Any, Any], None] | None = None
    own_network: bool = False


_METHODS: dict[str, MethodSpec] = {}
_loaded = False


def register_method(
    name: str,
    *,
    build: Callable[..., nn.Module],
    config: type | None = None,
    section: str | None = None,
    check: Callable[[Any, Any], None] | None = None,
    own_network: bool = False,
) -> MethodSpec:
    """Add a method under `name` (what `model.method` selects). A name is registered once. The
    section defaults to the config class's own `section` (see fgir.config_fields.MethodSection)."""
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered (by {_METHODS[name].build.__module__})")
    section = section or getattr(config, "section", None)
    if (config is None) != (section is None):
        raise ValueError(f"method '{name}': give both a config class and its section name, or neither")
    spec = MethodSpec(name, build, config, section, check, own_network)
    _METHODS[name] = spec
    return spec


def _load() -> None:
    """Import the built-in methods, then every `fgir.methods` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from fgir.methods.builtin import MODULES

    # A test or a user may import a method module before the registry loads: order by the listing.
    rank = {module: index for index, module in enumerate(MODULES)}
    ordered = sorted(_METHODS.values(), key=lambda spec: rank.get(spec.build.__module__, len(rank)))
    _METHODS.clear()
    _METHODS.update((spec.name, spec) for spec in ordered)

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if not inspect.ismodule(loaded):
                loaded()
        except Exception as err:  # a broken plugin must name itself, not fail somewhere later
            raise ConfigError(f"method plugin '{point.name}' ({point.value}, entry point group "
                              f"{ENTRY_POINT_GROUP}) failed to load: {type(err).__name__}: {err}") from err


def method_names() -> list[str]:
    """Every registered method, built-in ones first, in registration (import) order."""
    _load()
    return list(_METHODS)


def get_method(name: str, key: str = "model.method") -> MethodSpec:
    _load()
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method {key}='{name}' (known: {', '.join(sorted(_METHODS))}){hint}")
    return _METHODS[name]


def build_backbone(model: Any, image_size: int, pretrained: bool | None = None):
    """The ViT `Backbone` a method is built around, as `model` (a ModelConfig) names it."""
    from fgir.models.backbone import Backbone

    backbone = Backbone.create(
        model.backbone,
        pretrained=model.pretrained if pretrained is None else pretrained,
        weights=model.weights,
        img_size=image_size,
        drop_path_rate=model.drop_path,
        **model.backbone_args,
    )
    if model.drop_path_layout == "uniform":
        backbone.set_uniform_drop_path(model.drop_path)
    return backbone


def build_model(model: Any, num_classes: int, image_size: int, pretrained: bool | None = None) -> nn.Module:
    """Build the method named by `model.method` (a ModelConfig). `pretrained=False` skips weight
    loading (used when a checkpoint will overwrite every weight anyway)."""
    spec = get_method(model.method)
    if spec.own_network:
        return spec.build(model, num_classes, pretrained)
    return spec.build(build_backbone(model, image_size, pretrained), num_classes, model)


__all__ = ["MethodSpec", "build_backbone", "build_model", "get_method", "method_names", "register_method"]
