"""The recipes shipped with fgir, named `<dataset>/<method>[_<variant>...]` and composed from parts.

A name stands for these files of this package, later ones winning (as in a list of config files):

1. `datasets/<dataset>.yaml`: where the images are and how they are read (and augmented, where a
   paper fixes that per dataset);
2. `methods/<method>.yaml`: the model and its optimisation;
3. `deviations/<dataset>/<method>.yaml`, only where a paper departs from both for that pair
   (Stanford Dogs' GLSim selects 16 patches, not 8);
4. one `variants/` file per `_<variant>` suffix, in the order written: for variant `v` of method `m`,
   `variants/<p>_<v>.yaml` for the longest leading part `p` of `m` that has one (`animesion_224`
   serves every `animesion_*` method, `animesion_vit_ifa` the ViTs among them), else
   `variants/<v>.yaml` (`448`). Variant names have no underscore.

So `cub/glsim_448` is cub's dataset file, GLSim's method file and the 448 px variant, and
`dafb/animesion_vit_b16_ifa_224` adds the IFA head and the Animesion 224 px sizes to the Animesion
ViT-B/16 recipe on DAFB. A part alone is named by its folder (`methods/glsim`, `variants/448`), to
compose with a dataset file of one's own. The files are package data, found from any working
directory.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from fgir.config import ConfigError

ROOT = Path(str(resources.files(__name__)))
SUFFIX = ".yaml"
PART_FOLDERS = ("datasets", "methods", "variants", "augment")


def _stems(folder: str) -> list[str]:
    return sorted(path.stem for path in (ROOT / folder).glob(f"*{SUFFIX}"))


def dataset_names() -> list[str]:
    return _stems("datasets")


def method_names() -> list[str]:
    return _stems("methods")


def variant_names(method: str) -> list[str]:
    """The variants method `method` takes, each by the name written after it (`448`, `ifa`)."""
    names = set()
    for stem in _stems("variants"):
        prefix, _, variant = stem.rpartition("_")
        if not prefix or method == prefix or method.startswith(prefix + "_"):
            names.add(variant)
    return sorted(names, key=lambda name: (not name.isdigit(), name))


def deviation_names() -> list[str]:
    return sorted(f"{path.parent.name}/{path.stem}" for path in (ROOT / "deviations").glob(f"*/*{SUFFIX}"))


def recipe_files(name: str) -> list[Path]:
    """The files recipe `name` composes, lowest precedence first (or the one part it names by its
    folder, `methods/glsim`); a ConfigError naming the part that does not exist, with the nearest
    names, otherwise."""
    dataset, slash, rest = name.partition("/")
    if dataset in PART_FOLDERS:
        if rest not in _stems(dataset):
            raise _unknown(name, f"file '{rest}' in {dataset}/", rest, _stems(dataset))
        return [ROOT / dataset / f"{rest}{SUFFIX}"]
    if not slash or not dataset or not rest:
        raise ConfigError(f"'{name}' is neither a config file nor a recipe name (<dataset>/<method>, "
                          "e.g. cub/glsim; `fgir recipes` lists them)")
    if dataset not in dataset_names():
        raise _unknown(name, f"dataset '{dataset}'", dataset, dataset_names())
    method, variants = _split_method(name, rest)
    files = [ROOT / "datasets" / f"{dataset}{SUFFIX}", ROOT / "methods" / f"{method}{SUFFIX}"]
    deviation = ROOT / "deviations" / dataset / f"{method}{SUFFIX}"
    if deviation.is_file():
        files.append(deviation)
    return files + [_variant_file(name, method, variant) for variant in variants]


def is_recipe_name(name: str) -> bool:
    try:
        recipe_files(name)
    except ConfigError:
        return False
    return True


def _split_method(name: str, rest: str) -> tuple[str, list[str]]:
    """The longest leading `_`-joined part of `rest` that names a method, and the variants after it."""
    parts = rest.split("_")
    methods = method_names()
    for end in range(len(parts), 0, -1):
        if "_".join(parts[:end]) in methods:
            return "_".join(parts[:end]), parts[end:]
    candidates = methods + [f"{m}_{v}" for m in methods for v in variant_names(m)]
    raise _unknown(name, f"method '{rest}'", rest, candidates)


def _variant_file(name: str, method: str, variant: str) -> Path:
    parts = method.split("_")
    for end in range(len(parts), -1, -1):
        path = ROOT / "variants" / f"{'_'.join([*parts[:end], variant])}{SUFFIX}"
        if path.is_file():
            return path
    raise _unknown(name, f"variant '{variant}' of method {method}", variant, variant_names(method))


def _unknown(name: str, what: str, given: str, candidates: list[str]) -> ConfigError:
    close = difflib.get_close_matches(given, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(candidates)}"
    return ConfigError(f"'{name}' is neither a config file nor a known recipe: no {what}{hint}")


def describe() -> str:
    """What `fgir recipes` prints: the parts names are made of."""
    methods = method_names()
    variants: dict[str, list[str]] = {}
    for method in methods:
        variants.setdefault(" ".join(variant_names(method)), []).append(method)
    lines = [
        "Recipe names: <dataset>/<method>[_<variant>...], e.g. cub/glsim, cub/glsim_448, "
        "dafb/animesion_vit_b16_ifa_224.",
        "",
        "datasets:   " + " ".join(dataset_names()),
        "methods:    " + " ".join(methods),
    ]
    lines += [f"variants:   {names or '(none)'}  (for {' '.join(group)})" for names, group in variants.items()]
    lines += ["deviations: " + " ".join(deviation_names()) + "  (their own settings on top of dataset + method)",
              "", f"Files: {ROOT}"]
    return "\n".join(lines)
