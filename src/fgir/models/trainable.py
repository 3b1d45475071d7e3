"""Which modules of a model train and how many parameters: printed and saved (trainable_params.json)
with every run, for any method."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModuleCount:
    module: str  # dotted path, shortened to `depth` components
    trainable: int


@dataclass(frozen=True)
class TrainableReport:
    modules: list[ModuleCount]
    trainable: int
    total: int

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total,
                "modules": {count.module: count.trainable for count in self.modules}}

    def format(self) -> str:
        width = max([len("total"), *(len(count.module) for count in self.modules)])
        lines = [f"{count.module:<{width}}  {count.trainable:>12,}" for count in self.modules]
        share = 100 * self.trainable / self.total if self.total else 0.0
        lines.append(f"{'total':<{width}}  {self.trainable:>12,}  of {self.total:,} ({share:.2f}%)")
        return "\n".join(lines)


def trainable_report(model: nn.Module, depth: int = 4) -> TrainableReport:
    """Trainable parameter counts grouped by module path (the first `depth` components of each
    parameter's name, without the parameter's own name), in model order."""
    counts: dict[str, int] = {}
    total = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            module = ".".join(name.split(".")[:-1][:depth]) or name
            counts[module] = counts.get(module, 0) + parameter.numel()
    modules = [ModuleCount(module, count) for module, count in counts.items()]
    return TrainableReport(modules, sum(counts.values()), total)
