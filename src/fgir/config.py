"""Typed run configuration: dataclass schema, YAML composition and command-line overrides.

Precedence, lowest to highest: schema defaults < the config sources in the order given (YAML files
or recipe names such as `cub/glsim_448`, see fgir.recipes) < command-line dotlist (`train.lr=0.01`).
A YAML file may list other files or recipe names under `include:` (paths relative to itself); later
entries override earlier ones and the including file overrides them all.

Paths: data and weight paths (PATH_KEYS: data.root, model.weights, train.output_dir, train.resume,
train.init_from), in a YAML file or on the command line, are relative to the working directory the
command runs in, as for any shell command; only `include:` names config files, relative to the file
that includes them. A run saves its config with these paths made absolute (`with_absolute_paths`),
so its config.yaml and checkpoints work from any folder.
Unknown keys and values of the wrong type are errors that name the key and suggest the nearest one.

Methods: the schema is that of the method `model.method` selects (the last layer that sets it wins):
the shared ModelConfig keys plus that method's own section, registered with the method
(fgir.methods). A key of another method's section is an error naming its owner; configs fgir saved
(checkpoints, run configs) may carry other methods' sections, as older versions saved them, and
these are dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fgir.config_fields import fraction, non_negative, one_of, positive, timm_policy
from fgir.errors import ConfigError
from fgir.fileio import atomic_write_text
from fgir.methods import get_method, method_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SyntheticConfig:
    """The built-in fine-grained set (see fgir.data.synthetic); generated into `data.root`."""

    seed: int = 0
    num_classes: int = 10
    train_per_class: int = 48
    val_per_class: int = 12
    test_per_class: int = 24
    image_size: int = 64


@dataclass
class HFDataConfig:
    """data.format=hf: which columns of the Hugging Face dataset hold the image and the label."""

    image_column: str = "image"
    label_column: str = "label"  # a ClassLabel feature gives the class names
    # Where the images are exported once for reading (None: ~/.cache/fgir/hf-datasets).
    export_dir: str | None = None


@dataclass
class LongTailConfig:
    """Class groups of the long-tail report, by training images per class: head > head_above,
    medium head_above..tail_below inclusive, tail < tail_below (the Animesion/OLTR split)."""

    head_above: int = 100
    tail_below: int = 20


@dataclass
class DataConfig:
    name: str = "synthetic"
    # csv: `class_id,dir` with header; labels: headerless `class_id,path` (DAF:re);
    # folder: one sub-folder per class; synthetic: generated into `root`, then read as csv;
    # hf: a Hugging Face dataset (root: a save_to_disk folder or hf-hub:ORG/NAME; splits by name).
    format: str = "synthetic"
    root: str = "data/synthetic"
    image_dir: str = "."
    train: str = "train.csv"
    val: str | None = "val.csv"
    test: str | None = "test.csv"
    class_names: str | None = None
    num_classes: int | None = None
    image_size: int = 224
    # Train and test images are first resized to a square of round(resize_ratio * image_size)
    # (300 for 224, as in the GLSim recipe), then cropped.
    resize_ratio: float = 1.34
    # JPEGs much larger than the resize size are decoded at a reduced scale (1/2, 1/4, 1/8) that stays
    # at least that size: the same images for the model, far less decoding work.
    fast_decode: bool = True
    augment: str = "weak"  # weak | medium | strong
    color_jitter: float = 0.0  # brightness, contrast, saturation and hue jitter in training (Animesion: 0.1)
    # timm's RandAugment or AugMix policy string in training, after the crop and flip (e.g.
    # rand-m9-mstd0.5-inc1, augmix-m5-w4-d2); in the medium and strong presets it replaces TrivialAugmentWide.
    auto_augment: str | None = None
    # Repeated augmentation (timm's RepeatAugSampler): each drawn image comes N times per epoch, each
    # time augmented differently, with the epoch kept about the dataset's size; 1 or null: off.
    repeated_aug: int | None = None
    # Test images: crop = resize to the train resize size, then centre-crop image_size (GLSim);
    # direct = resize straight to image_size (Animesion).
    test_resize: str = "crop"
    # tensor: resize, crop, flip and colour steps run on uint8 tensors (torch's vectorised kernels,
    # several times faster than Pillow's); pil: on PIL images, the reference implementations' arithmetic.
    transform_backend: str = "tensor"
    # Resampling of the square resize, in train and test: bilinear, or bicubic as every reference
    # transform (with transform_backend=pil, pixel for pixel torchvision's PIL pipeline).
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    random_erasing: float = 0.3  # medium and strong presets only
    mixup_alpha: float = 0.8  # strong preset only
    cutmix_alpha: float = 1.0  # strong preset only
    # The global batch: under torchrun each of the W processes takes batch_size / W (which must divide),
    # so a recipe trains the same whatever the number of processes.
    batch_size: int = 8
    eval_batch_size: int = 64
    num_workers: int = -1  # -1: chosen from the machine
    # fail: an unreadable or missing image stops the run, naming the file. skip: training leaves such
    # images out of their batch and lists them at the end of each epoch (metrics.json `skipped_images`);
    # evaluation reports them and how many images were scored.
    on_error: str = "fail"
    # Images with more pixels are refused before decoding, by every verb (train, eval, check, predict,
    # serve): a decoded 40 MP image holds about 300 MB in each process that reads it.
    max_image_pixels: int = 40_000_000
    # Open every listed image's header before any work (fgir.data.preflight), so a bad file stops a run at
    # its start, not hours in: on, off, or auto (on when the splits list fewer than 150,000 images).
    preflight: str = "auto"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    long_tail: LongTailConfig = field(default_factory=LongTailConfig)
    hf: HFDataConfig = field(default_factory=HFDataConfig)


@dataclass
class ModelConfig:
    """The keys every method shares; each method adds its own section (model.glsim, model.ifa,
    model.peft), which exists only where model.method names that method."""

    method: str = "vit"
    backbone: str = "vit_base_patch16_224.orig_in21k"
    pretrained: bool = True
    # A local weight file (.safetensors/.pth/.bin/.npz) or directory; None: the Hugging Face hub.
    weights: str | None = None
    # Extra keyword arguments for timm.create_model (e.g. depth, embed_dim for tiny test models).
    backbone_args: dict[str, Any] = field(default_factory=dict)
    drop_path: float = 0.0
    # How the stochastic-depth rate is spread over the blocks: linear (timm's ramp from 0 to drop_path
    # over depth) or uniform (drop_path in every block and in GLSim's aggregator, as the GLSim / ILA
    # reference code builds it).
    drop_path_layout: str = "linear"
    # Zero-initialised head (the fine-tuning recipes'): training starts from uniform predictions.
    # From scratch, a random head lets gradients reach the backbone from the first step.
    zero_init_head: bool = True

    def __reduce__(self):
        # A method's schema class is made at run time (`model_schema`): rebuilt from the method's name.
        return _rebuild, ("model", self.method, _fields_of(self))


@dataclass
class TrainConfig:
    epochs: int = 50
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw
    lr: float = 0.01
    # The global batch train.lr was tuned for: another data.batch_size then scales the lr linearly
    # (lr x batch / lr_base_batch). None (the paper recipes): the lr is used as given.
    lr_base_batch: int | None = None
    # Layer-wise lr decay for full fine-tuning (e.g. 0.75): block i of L trains at lr x decay^(L - i),
    # as timm assigns it. None: one lr for every layer (the paper recipes).
    layer_decay: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    warmup_steps: int = 500
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    # standard: warm-up, then a cosine over the steps after it, step i at its own value. reference: the
    # GLSim / ILA reference trainers' arithmetic (timm's cosine counted from step 0, warm-up included;
    # step i runs at the value of step i - 1), what the papers' numbers were trained with.
    schedule: str = "standard"
    label_smoothing: float = 0.0
    # Per-class loss weights for long-tailed training sets: none | inverse_sqrt | effective_number.
    class_weights: str = "none"
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    grad_accum_steps: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    eval_every: int = 1  # epochs between validation passes
    # Which weights score the test split: val, the best on the validation split (model selection for
    # one's own data); last, the last epoch's, as the papers report (their recipes train on train_val
    # with no validation split, and the test split is scored once).
    # average: the mean of the train.average_top best epochs' weights (timm's avg_checkpoints).
    select: str = "val"
    # Weight EMA (timm's ModelEmaV3, updated after every optimizer step): e.g. 0.9998; None or 0: off.
    # ema_warmup: timm's decay warm-up, min(ema_decay, 1 - n^(-2/3)) at optimizer step n.
    ema_decay: float | None = None
    ema_warmup: bool = False
    # Which weights of a checkpoint score the test split and load in predict / eval / export when the
    # EMA is on: raw, ema, or best (whichever scored the higher validation top-1 that epoch).
    ema_select: str = "ema"
    # Keep the N best epochs' weights (by validation top-1) and write their mean as
    # checkpoints/averaged.safetensors at the end; 0: off.
    average_top: int = 0
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # a run directory to continue
    # A checkpoint file or run directory whose model weights start this (new) run; its class count
    # must match unless init_new_head is true, which starts the classification head afresh.
    init_from: str | None = None
    init_new_head: bool = False
    output_dir: str = "runs"
    run_name: str | None = None
    log_every: int = 10  # steps between scalar logs
    max_bad_steps: int = 5  # optimizer steps in a row with a non-finite loss or gradient before giving up
    checkpoint_every_steps: int = 0  # a resumable mid-epoch `last` checkpoint every N optimizer steps; 0: off
    compile: bool = False  # torch.compile the model (falls back to eager, with a warning, where it fails)
    # Model and images in channels-last memory order (NHWC): faster convolutions for CNN baselines.
    channels_last: bool = False
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, more time
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "fgir"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __reduce__(self):
        return _rebuild, ("config", self.model.method, _fields_of(self))


def _fields_of(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _rebuild(kind: str, method: str, fields: dict[str, Any]) -> Any:
    """Unpickle a config (e.g. in a spawned process) by its method's schema."""
    return (model_schema if kind == "model" else config_schema)(method)(**fields)


CHOICES = {
    "data.format": ("csv", "labels", "folder", "synthetic", "hf"),
    "data.augment": ("weak", "medium", "strong"),
    "data.test_resize": ("crop", "direct"),
    "data.transform_backend": ("tensor", "pil"),
    "data.interpolation": ("bilinear", "bicubic"),
    "data.on_error": ("fail", "skip"),
    "data.preflight": ("auto", "on", "off"),
    "model.drop_path_layout": ("linear", "uniform"),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("standard", "reference"),
    "train.select": ("val", "last", "average"),
    "train.ema_select": ("raw", "ema", "best"),
    "train.class_weights": ("none", "inverse_sqrt", "effective_number"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


@functools.cache
def model_schema(method: str) -> type[ModelConfig]:
    """ModelConfig plus the section of `method` (`model.<section>`) when it has one."""
    spec = get_method(method)
    if spec.config is None:
        return ModelConfig
    return dataclasses.make_dataclass(
        "ModelConfig", [(spec.section, spec.config, field(default_factory=spec.config))], bases=(ModelConfig,)
    )


@functools.cache
def config_schema(method: str) -> type[Config]:
    """The schema of a run of `method`: Config whose `model` is `model_schema(method)`."""
    model = model_schema(method)
    if model is ModelConfig:
        return Config
    return dataclasses.make_dataclass("Config", [("model", model, field(default_factory=model))], bases=(Config,))


def model_config(method: str = "vit", **fields: Any) -> ModelConfig:
    """A ModelConfig for `method` from Python, e.g. `model_config("glsim", glsim=GLSimConfig(top_o=4))`."""
    return model_schema(method)(method=method, **fields)


def _schema_keys(schema: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> dataclass field type, for every key the schema accepts."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}{f.name}"
        keys[dotted] = f.type
        nested = _nested_dataclass(schema, f.name)
        if nested is not None:
            keys.update(_schema_keys(nested, dotted + "."))
    return keys


def _nested_dataclass(schema: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(schema) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:
        value = default.default_factory()
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def _free_form_keys(schema: type, prefix: str = "") -> set[str]:
    """Keys whose value is a free-form mapping (any sub-key allowed)."""
    out = set()
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}{f.name}"
        nested = _nested_dataclass(schema, f.name)
        if nested is not None:
            out |= _free_form_keys(nested, dotted + ".")
        elif str(f.type).startswith("dict"):
            out.add(dotted)
    return out


@functools.cache
def schema_keys(method: str = "vit") -> dict[str, Any]:
    """Dotted key -> type, for every key a run of `method` accepts."""
    return _schema_keys(config_schema(method))


@functools.cache
def _free_form(method: str) -> frozenset[str]:
    return frozenset(_free_form_keys(config_schema(method)))


def key_owners(key: str) -> list[str]:
    """The methods whose schema has `key` (a key or a section)."""
    return [name for name in method_names() if key in schema_keys(name)]


# Names users try for a key whose spelling is nothing like them (difflib would pick another key).
KEY_ALIASES = {
    "model.name": "model.backbone",
    "model.arch": "model.backbone",
    "model.architecture": "model.backbone",
    "model.model": "model.backbone",
    "model.timm_model": "model.backbone",
}


def _unknown_key_error(key: str, origin: str, valid: dict[str, Any] | list[str]) -> ConfigError:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in valid if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    close = [KEY_ALIASES[key]] if key in KEY_ALIASES else difflib.get_close_matches(
        key, siblings, n=1, cutoff=0.5
    ) or difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(sorted(siblings))}"
    return ConfigError(f"unknown config key '{key}' ({origin}){hint}")


def _check_keys(tree: Any, origin: str, method: str, prefix: str = "") -> None:
    if not isinstance(tree, dict):
        return
    valid = schema_keys(method)
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted not in valid:
            owners = key_owners(dotted)
            if owners:
                raise ConfigError(f"config key '{dotted}' ({origin}) is an option of method "
                                  f"{', '.join(owners)}, not of model.method='{method}'")
            raise _unknown_key_error(dotted, origin, valid)
        if dotted not in _free_form(method):
            _check_keys(value, origin, method, dotted + ".")


def _without_foreign_keys(tree: dict, method: str) -> dict:
    """`tree` without the model keys that belong to other methods only. Checkpoints and run configs
    written before methods owned their sections carry every method's section."""
    valid = schema_keys(method)

    def prune(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict) or prefix in _free_form(method):
            return node
        return {key: prune(value, f"{prefix}.{key}") for key, value in node.items()
                if f"{prefix}.{key}" in valid or not key_owners(f"{prefix}.{key}")}

    if not isinstance(tree.get("model"), dict):
        return tree
    return {**tree, "model": prune(tree["model"], "model")}


def _method_of(layers: list[tuple[str, dict]]) -> str:
    """`model.method` as the last layer that sets it has it ("vit" when none does)."""
    method = "vit"
    for _, tree in layers:
        model = tree.get("model")
        if isinstance(model, dict) and "method" in model:
            method = model["method"]
    get_method(str(method))  # an unknown name stops here, with the known ones
    return str(method)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """The file and everything it includes, as (origin, mapping) pairs, lowest precedence first."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"include cycle: {chain}")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    includes = tree.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    layers: list[tuple[str, dict]] = []
    for inc in includes:
        layers += _read_source(inc, path.parent, (*seen, path))
    layers.append((str(path), tree))
    return layers


YAML_SUFFIXES = (".yaml", ".yml")
ConfigSources = str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...] | None


def _read_source(source: str | os.PathLike, folder: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """A YAML file (relative to `folder`) if one is there or the source names one by its suffix;
    otherwise a recipe name, read as the files it stands for."""
    path = folder / source
    if path.exists() or path.suffix in YAML_SUFFIXES:
        return _read_yaml(path, seen)
    from fgir.recipes import recipe_files  # the recipes package imports this module

    return [layer for file in recipe_files(str(source)) for layer in _read_yaml(file, seen)]


def _read_sources(sources: ConfigSources) -> list[tuple[str, dict]]:
    """The layers of config sources (one, or several in precedence order), paths relative to the
    working directory."""
    if sources is None:
        return []
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    return [layer for source in sources for layer in _read_source(source, Path())]


def _dotlist_to_tree(overrides: list[str]) -> list[tuple[str, dict]]:
    layers = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"command-line override '{item}': the value is not valid YAML "
                              f"({getattr(err, 'problem', None) or err}); quote it to pass text") from None
        tree: dict = {}
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        layers.append((f"command line '{item}'", tree))
    return layers


def _merge_layer(base: DictConfig, origin: str, tree: dict, method: str) -> DictConfig:
    _check_keys(tree, origin, method)
    try:
        return OmegaConf.merge(base, tree)
    except OmegaConfBaseException as err:
        # An element of a list ('data.mean[0]') is reported as the list, the schema's unit.
        key = (getattr(err, "full_key", None) or "?").split("[")[0]
        got = _value_in(tree, key)
        valid = schema_keys(method)
        if key not in valid or got is _ABSENT:  # OmegaConf's first line, without its internals
            raise ConfigError(f"bad value ({origin}): {str(err).splitlines()[0]}") from None
        shown = "null" if got is None else f"{got!r} ({type(got).__name__})"
        raise ConfigError(f"bad value for config key '{key}' ({origin}): expected {valid[key]}, got {shown}") from None


_ABSENT = object()


def _value_in(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _compose(layers: list[tuple[str, dict]], saved: int = 0) -> Config:
    """Merge `layers` onto the schema of the method they select; the first `saved` layers are
    configs fgir wrote (a checkpoint's, a run's), whose other methods' sections are dropped."""
    method = _method_of(layers)
    base = OmegaConf.structured(config_schema(method))
    for index, (origin, tree) in enumerate(layers):
        if index < saved:
            tree = _without_foreign_keys(tree, method)
        base = _merge_layer(base, origin, tree, method)
    config: Config = OmegaConf.to_object(base)  # type: ignore[assignment]
    validate(config)
    return config


def load_config(sources: ConfigSources = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from config sources (a YAML file or recipe name, or a list of them,
    later ones winning) and `key=value` overrides on top."""
    return _compose(_read_sources(sources) + _dotlist_to_tree(list(overrides or [])))


def load_saved_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """A config.yaml that a run saved, with `key=value` overrides checked as on the command line."""
    layers = _read_yaml(Path(path))
    return _compose(layers + _dotlist_to_tree(list(overrides or [])), saved=len(layers))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """`key=value` overrides on top of an existing config, checked as on the command line."""
    return _compose([("config", to_dict(config)), *_dotlist_to_tree(overrides)], saved=1)


POSITIVE = ("train.lr", "train.epochs", "train.grad_accum_steps", "train.eval_every", "train.max_bad_steps",
            "data.image_size", "data.batch_size", "data.eval_batch_size", "data.resize_ratio", "data.max_image_pixels")
NON_NEGATIVE = ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.min_lr", "train.warmup_lr",
                "train.checkpoint_every_steps", "train.average_top")


def _value(config: Config, key: str) -> Any:
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def validate(config: Config) -> None:
    """Reject values no run could use, before any work starts. A method's own section checks
    itself when it is made (`fgir.config_fields.MethodSection`)."""
    # YAML reads a bare on / off as a boolean, which this str key receives as 'True' / 'False'.
    config.data.preflight = {"True": "on", "False": "off"}.get(config.data.preflight, config.data.preflight)
    for key, allowed in CHOICES.items():
        one_of(key, _value(config, key), allowed)
    for key in POSITIVE:
        positive(key, _value(config, key))
    if config.train.layer_decay is not None and not 0 < config.train.layer_decay <= 1:
        raise ConfigError(f"config key 'train.layer_decay' must be in (0, 1] or null, got {config.train.layer_decay}")
    if config.train.lr_base_batch is not None and config.train.lr_base_batch < 1:
        raise ConfigError(f"config key 'train.lr_base_batch' must be >= 1 or null, got {config.train.lr_base_batch}")
    if config.data.repeated_aug is not None and config.data.repeated_aug < 1:
        raise ConfigError(f"config key 'data.repeated_aug' must be >= 1 or null (1 and null: off), "
                          f"got {config.data.repeated_aug}")
    timm_policy(config.data.auto_augment)
    for key in NON_NEGATIVE:
        non_negative(key, _value(config, key))
    fraction("train.label_smoothing", config.train.label_smoothing)
    _check_weight_averaging(config)
    _check_backbone(config.model.backbone)
    if not 0 <= config.data.color_jitter <= 0.5:
        raise ConfigError(f"config key 'data.color_jitter' must be in [0, 0.5] (hue jitter is at most 0.5), "
                          f"got {config.data.color_jitter}")
    if config.data.resize_ratio < 1:
        raise ConfigError(f"config key 'data.resize_ratio' must be >= 1 (resize, then crop), got {config.data.resize_ratio}")
    long_tail = config.data.long_tail
    if not 1 <= long_tail.tail_below <= long_tail.head_above + 1:
        raise ConfigError(f"config keys 'data.long_tail.tail_below' ({long_tail.tail_below}) and "
                          f"'data.long_tail.head_above' ({long_tail.head_above}) must satisfy "
                          "1 <= tail_below <= head_above + 1")
    if len(config.data.mean) != 3 or len(config.data.std) != 3:
        raise ConfigError("config keys 'data.mean' and 'data.std' must have 3 values (RGB)")


def _check_weight_averaging(config: Config) -> None:
    """The EMA and top-N averaging keys (fgir.engine.ema, fgir.engine.averaging)."""
    train = config.train
    if train.ema_decay and not 0 < train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must be in (0, 1) (e.g. 0.9998), or 0 / null for no "
                          f"EMA, got {train.ema_decay}")
    if train.ema_decay and train.ema_select == "best" and not config.data.val:
        raise ConfigError("train.ema_select=best picks raw or EMA weights by validation top-1, but data.val is "
                          "null: give a validation split, or train.ema_select=raw / ema")
    if train.average_top and not config.data.val:
        raise ConfigError(f"train.average_top={train.average_top} keeps the best epochs by validation top-1, but "
                          "data.val is null: give a validation split, or train.average_top=0")
    if train.select == "average" and not train.average_top:
        raise ConfigError("train.select=average tests the mean of the best epochs, but train.average_top=0: "
                          "give e.g. train.average_top=3, or train.select=val / last")


def _check_backbone(name: str) -> None:
    """A timm name (any method's backbone, ViT or CNN), checked before any work."""
    from fgir.models.weights import ModelNameError, require_known  # timm: only when a config is validated

    try:
        require_known(name)
    except ModelNameError as err:
        raise ConfigError(f"config key 'model.backbone': {err}") from None


def to_dict(config: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def from_dict(tree: dict, origin: str = "checkpoint") -> Config:
    """A config that fgir saved (a checkpoint's or a run's); sections of other methods, which
    older versions saved with every run, are dropped."""
    return _compose([(origin, tree)], saved=1)


# Keys that name files or folders. data.image_dir, the split names and data.class_names are relative
# to data.root, so they follow it. A Hugging Face Hub name (hf-hub:ORG/NAME) is not a path.
HUB_PREFIX = "hf-hub:"
PATH_KEYS = ("data.root", "model.weights", "train.output_dir", "train.resume", "train.init_from")


def absolute_path(path: str | os.PathLike) -> str:
    """`path` made absolute against the working directory (`~` expanded, symbolic links kept)."""
    return os.path.abspath(os.path.expanduser(path))


def with_absolute_paths(config: Config) -> Config:
    """A copy of `config` whose PATH_KEYS are absolute: what a run saves, so that its config and
    checkpoints work from any folder."""
    config = copy.deepcopy(config)
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not value.startswith(HUB_PREFIX):
            setattr(getattr(config, section), name, absolute_path(value))
    return config


def save_config(config: Config, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "HFDataConfig",
    "LongTailConfig",
    "ModelConfig",
    "SyntheticConfig",
    "TrainConfig",
    "absolute_path",
    "apply_overrides",
    "config_schema",
    "from_dict",
    "load_config",
    "load_saved_config",
    "model_config",
    "model_schema",
    "save_config",
    "schema_keys",
    "to_dict",
    "validate",
    "with_absolute_paths",
]
