"""The import rules of docs/architecture.md, read from the source: a layer imports only the layers
below it, and the engine, tools and app know no method by name."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "fgir"

# Package -> the fgir packages it may import (besides itself and the base modules).
BASE = {"errors", "fileio", "config_fields"}
ALLOWED = {
    "config": {"methods", "recipes", "models"},  # models: only timm's name check, imported when validating
    "recipes": {"config"},
    "data": {"config"},
    "models": {"config", "methods"},  # a method module registers itself and offers capabilities
    "methods": {"models"},  # the built-in list imports the method modules
    "hub": {"config", "fgir"},
    "engine": {"config", "data", "methods", "models", "hub"},
    "tools": {"config", "data", "engine", "methods", "models", "hub", "recipes"},
    "app": {"config", "data", "methods", "models", "tools"},
}
# The engine builds any method through the registry: it may use these model modules only.
ENGINE_MODELS = {"fgir.models.backbone", "fgir.models.weights", "fgir.models.state_fit", "fgir.models.trainable"}
METHOD_MODULES = {"fgir.models.glsim", "fgir.models.ila", "fgir.models.ifa", "fgir.models.cnn",
                  "fgir.models.classifier"} | {f"fgir.models.peft.{name}" for name in
                                               ("adapters", "bitfit", "linear_probe", "lora", "vpt", "merge")}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fgir":
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "fgir")
    return names


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fgir"


def modules(package: str) -> list[Path]:
    folder = SRC / package
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [SRC / f"{package}.py"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(package):
    for path in modules(package):
        for module in imports(path):
            target = package_of(module)
            assert target in ALLOWED[package] | BASE | {package}, f"{path.relative_to(SRC)} imports {module}"


def test_the_engine_knows_no_method_and_no_peft():
    for path in modules("engine"):
        found = imports(path)
        models = {m for m in found if m.startswith("fgir.models")}
        assert models <= ENGINE_MODELS, f"{path.relative_to(SRC)} imports {models - ENGINE_MODELS}"
        assert "peft" not in path.read_text(), f"{path.relative_to(SRC)} mentions peft"


@pytest.mark.parametrize("package", ["tools", "app"])
def test_tools_and_the_app_ask_for_capabilities_not_method_classes(package):
    # Converters of one method's files: the LoRA merge and the GLSim reference release.
    allowed = {"fgir.models.peft.merge", "fgir.models.glsim"}
    for path in modules(package):
        used = imports(path) & METHOD_MODULES - allowed
        assert not used, f"{path.relative_to(SRC)} imports method modules {used}"
