"""Model cost on this machine: parameters, FLOPs, inference and training throughput, latency and
peak memory, as a JSON-ready dict. Timings are medians or rates measured after warm-up; the
numbers that matter are recorded in the docs, never asserted in tests."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fgir.config import Config, ConfigError, DataConfig, ModelConfig, load_config
from fgir.engine.acceleration import compile_model, use_channels_last
from fgir.engine.checkpoint import restore_model
from fgir.engine.device import autocast, resolve_device, resolve_precision
from fgir.hub import is_hub_reference
from fgir.methods import build_model
from fgir.methods.capabilities import SelectsRegions


def benchmark(
    model: nn.Module | ModelConfig | Config,
    num_classes: int | None = None,
    image_size: int | None = None,
    *,
    device: str = "auto",
    batch_size: int = 8,
    warmup: int = 2,
    iters: int = 5,
    precision: str = "fp32",
    compile: bool = False,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Benchmark a model, or the model a config describes (built with random weights).

    `num_classes` and `image_size` describe the model to build from a config (a Config's data section
    supplies them by default); a module needs only `image_size`. A module is benchmarked as it is
    (frozen parameters stay frozen), moved to `device`, and its weights are left unchanged.
    `compile` runs it through torch.compile with frozen weights (what `fgir eval/predict --compile`
    do); the warm-up calls pay for the compilation, so give it at least 1. `channels_last` None takes
    a Config's `train.channels_last` (False for a module or a ModelConfig).
    """
    if isinstance(model, Config):
        channels_last = model.train.channels_last if channels_last is None else channels_last
        num_classes = num_classes or declared_num_classes(model.data)
        image_size = image_size or model.data.image_size
        model = model.model
    if image_size is None:
        raise ValueError("benchmark needs image_size")
    if isinstance(model, ModelConfig):
        if num_classes is None:
            raise ConfigError("benchmark of a model config needs num_classes (set data.num_classes=N)")
        name = f"{model.method}/{model.backbone}"
        model = build_model(model, num_classes, image_size, pretrained=False)
    else:
        name = type(model).__name__
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    model = model.to(torch_device).eval()
    if channels_last:
        use_channels_last(model)
    images = torch.randn(batch_size, 3, image_size, image_size, device=torch_device)
    num_outputs = _forward(model, images[:1], torch_device, dtype).shape[1]
    gflops = count_flops(model, image_size, torch_device) / 1e9  # counted eagerly, before any compilation
    if compile:
        # The training step compiles its own graph with gradients, which is not frozen; its learning
        # rate is 0, so the frozen inference graph stays true to the weights.
        compile_model(model, frozen_weights=True)

    memory = PeakMemory(torch_device)
    with memory:
        inference = throughput(lambda: _forward(model, images, torch_device, dtype), batch_size, warmup, iters,
                               torch_device)
        latency = median_ms(lambda: _forward(model, images[:1], torch_device, dtype), warmup, iters, torch_device)
        train_step = training_step(model, images, num_outputs, torch_device, dtype)
        train = throughput(train_step, batch_size, warmup, iters, torch_device) if train_step else None

    report = {
        "model": name,
        "image_size": image_size,
        "num_classes": num_outputs,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gflops_per_image": gflops,
        "gmacs_per_image": gflops / 2,  # the papers' "FLOPs": multiply-accumulates
        "batch_size": batch_size,
        "infer_img_per_s": inference,
        "latency_ms_batch1": latency,
        "train_img_per_s": train,  # None when nothing is trainable
        "peak_memory_mb": memory.peak_mb,
        "peak_memory_source": memory.source,
        "precision": precision,
        "compiled": compile,
        "channels_last": bool(channels_last),
        "device": str(torch_device),
        "device_name": device_name(torch_device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "warmup": warmup,
        "iters": iters,
    }
    if isinstance(model, SelectsRegions):
        report["glsim_selection"] = selection_cost(model, images, torch_device, warmup, iters)
    selector = selector_summary(model, warmup, iters, torch_device, gflops)
    if selector is not None:
        report["selector"] = selector
    return report


def selector_summary(model: nn.Module, warmup: int, iters: int, device: torch.device,
                     model_gflops: float) -> dict[str, Any] | None:
    """The cost of a model's token or region selector (TransFG's PSM, FFVT's MAWS, GLSim's GLS,
    attention rollout) for one image, as `fgir.tools.selector_cost` counts it and times it on random
    inputs of the model's shapes (batch 1: the maps of a batch would take B times the memory), with
    its share of the model's forward FLOPs; None for a model without one."""
    from fgir.tools.selector_cost import selector_report  # it builds on this module's timers

    report = selector_report(model, warmup, iters, device)
    if report is None:
        return None
    return {**report, "selector_share_of_forward_flops": report["selector_gflops_per_image"] / model_gflops}


@torch.inference_mode()
def selection_cost(model: SelectsRegions, images: torch.Tensor, device: torch.device, warmup: int,
                   iters: int) -> dict[str, float]:
    """A selection step (GLSim's: GLS scores, top-O, boxes, batched crop + resize) against one encoder
    pass: FLOPs per image (the selection's counted by hand, see `selection_flops`) and median times
    per batch."""
    first_pass = model.selection_input(images)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model.backbone.forward_features(images[:1])
    encoder_flops = counter.get_total_flops()
    selection = model.selection_flops(tuple(images.shape[-2:]))
    encoder_ms = median_ms(lambda: model.backbone.forward_features(images), warmup, iters, device)
    selection_ms = median_ms(lambda: model.select(images, first_pass), warmup, max(iters, 10), device)
    return {
        "selection_gflops_per_image": selection / 1e9,
        "encoder_pass_gflops_per_image": encoder_flops / 1e9,
        "encoder_pass_gmacs_per_image": encoder_flops / 2e9,
        "selection_ms": selection_ms,
        "encoder_pass_ms": encoder_ms,
        "selection_time_share": selection_ms / encoder_ms,
    }


def benchmark_target(target: str | os.PathLike | list[str | os.PathLike], overrides: list[str] | None = None,
                     weights: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """What `fgir bench` measures: a checkpoint (file or run directory; `weights`: the backbone
    weights of an adapter-only one), or the model of a recipe (a name or YAML file, or a list of
    them, later ones winning) with `key=value` overrides (random weights; no dataset or download
    needed)."""
    sources = [target] if isinstance(target, str | os.PathLike) else list(target)
    path = Path(sources[0])
    if len(sources) == 1 and (is_hub_reference(sources[0]) or path.is_dir() or path.suffix == ".safetensors"):
        if overrides:
            raise ConfigError(f"overrides apply to a recipe, not to the checkpoint {path}: {' '.join(overrides)}")
        return benchmark_checkpoint(sources[0], weights=weights, **kwargs)
    recipe = " ".join(str(source) for source in sources)
    if weights is not None:
        raise ConfigError(f"--weights applies to a checkpoint; the recipe {recipe} is benchmarked with random weights")
    return {**benchmark(load_config(sources, overrides), **kwargs), "recipe": recipe}


def declared_num_classes(data: DataConfig) -> int | None:
    """The class count a recipe states, read without touching the dataset."""
    if data.num_classes is not None:
        return data.num_classes
    return data.synthetic.num_classes if data.format == "synthetic" else None


def benchmark_checkpoint(path: str | os.PathLike, weights: str | os.PathLike | None = None,
                         **kwargs: Any) -> dict[str, Any]:
    """Benchmark the model of a checkpoint (file or run directory) at its training image size;
    `weights` as in `restore_model`."""
    model, checkpoint = restore_model(path, weights=weights)
    kwargs.setdefault("channels_last", checkpoint.config.train.channels_last)
    report = benchmark(model, image_size=checkpoint.config.data.image_size, **kwargs)
    model_cfg = checkpoint.config.model
    return {**report, "model": f"{model_cfg.method}/{model_cfg.backbone}", "checkpoint": str(checkpoint.path)}


def count_flops(model: nn.Module, image_size: int, device: torch.device) -> int:
    """Forward FLOPs of one image (2 per multiply-accumulate, as FlopCounterMode counts; the papers'
    "FLOPs" are multiply-accumulates, half this).

    Attention runs through the math SDPA backend here: its matmuls are counted on every device,
    while the fused CPU kernel is not in FlopCounterMode's registry and would count as zero.
    """
    image = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    # Grad mode stays on: FlopCounterMode's module tracker hooks every tensor that requires grad, and
    # fails on a parameter passed between modules (VPT's prompts) when no graph is being built.
    with sdpa_kernel(SDPBackend.MATH), counter:
        model.eval()(image)
    return counter.get_total_flops()


@torch.inference_mode()
def _forward(model: nn.Module, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    with autocast(device, dtype):
        return model(images)


def training_step(model: nn.Module, images: torch.Tensor, num_classes: int, device: torch.device,
                  dtype: torch.dtype | None) -> Callable[[], None] | None:
    """Forward + backward + SGD step on random labels, or None when no parameter is trainable.
    SGD with momentum, as the recipes train, so its buffers count in the peak memory; the learning
    rate is 0: the step does all the usual work but leaves the weights as they were."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return None
    optimizer = torch.optim.SGD(trainable, lr=0.0, momentum=0.9)
    labels = torch.randint(0, num_classes, (len(images),), device=device)

    def step() -> None:
        model.train()
        with autocast(device, dtype):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA calls return before it is done); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(run: Callable[[], Any], batch_size: int, warmup: int, iters: int, device: torch.device) -> float:
    """Images per second over `iters` calls of `run` (one batch each), after `warmup` calls."""
    for _ in range(warmup):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        run()
    synchronize(device)
    return batch_size * iters / (time.perf_counter() - start)


def median_ms(run: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> float:
    """Median wall time of one call of `run`, in milliseconds, after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


class PeakMemory:
    """Peak memory used above what was in use on entry (the model's weights are already resident).

    CUDA: torch's allocator statistics. CPU: the process's peak resident set size, reset on entry
    through /proc/self/clear_refs where Linux allows it (VmHWM); otherwise getrusage's lifetime
    peak, which reads 0 if the process was ever bigger before.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float = 0.0
        self.source = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._read_peak = lambda: torch.cuda.max_memory_allocated(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.source = "torch.cuda.max_memory_allocated"
        elif _reset_peak_rss():
            self._read_peak = lambda: _status_kib("VmHWM") * 1024
            self._start = _status_kib("VmRSS") * 1024
            self.source = "peak RSS (VmHWM after a /proc/self/clear_refs reset)"
        else:
            self._read_peak = _lifetime_peak_rss
            self._start = _lifetime_peak_rss()
            self.source = "ru_maxrss increase (process lifetime peak)"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak_mb = max(self._read_peak() - self._start, 0) / 2**20


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _lifetime_peak_rss() -> int:
    """Bytes; ru_maxrss is in KiB on Linux and in bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
