"""train.schedule=reference against timm's CosineLRScheduler driven as the GLSim / ILA reference
trainers drive it: optimizer step, then `step_update(num_updates=i)` with i the step just taken."""

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from fgir.config import TrainConfig
from fgir.engine.optim import build_optimizer, build_scheduler, lr_at

CUB = dict(lr=0.01, warmup_steps=500, warmup_lr=1e-6, min_lr=1e-5)  # the papers' CUB recipe
CUB_STEPS = 50 * 749  # 50 epochs of 5,994 images at batch 8


def reference_lrs(train: TrainConfig, total: int) -> list[float]:
    """The lr of each optimizer step in the reference loop, with timm's scheduler as the oracle."""
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=train.lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=train.min_lr, warmup_lr_init=train.warmup_lr,
                                  warmup_t=train.warmup_steps, cycle_limit=1, t_in_epochs=False)
    seen = []
    for step in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(num_updates=step)  # the reference's curr_iter, before it is incremented
    return seen


def fgir_lrs(train: TrainConfig, total: int) -> list[float]:
    """The lr of each optimizer step in fgir's trainer (its LambdaLR steps once per optimizer step)."""
    optimizer = build_optimizer(torch.nn.Linear(1, 1), train)
    scheduler = build_scheduler(optimizer, total, train)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return seen


@pytest.mark.parametrize("settings, total", [(dict(lr=0.1, warmup_steps=3, warmup_lr=1e-4, min_lr=1e-3), 12),
                                             (CUB, CUB_STEPS)])
def test_every_step_of_the_reference_schedule_equals_timm_driven_as_the_reference_trainer(settings, total):
    train = TrainConfig(schedule="reference", **settings)
    expected, got = reference_lrs(train, total), fgir_lrs(train, total)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-12
    assert got == pytest.approx([lr_at(step, total, train) for step in range(total)], abs=1e-15)


def test_the_papers_numbers_of_the_reference_schedule_and_how_standard_differs():
    reference, standard = TrainConfig(schedule="reference", **CUB), TrainConfig(**CUB)
    assert lr_at(0, CUB_STEPS, reference) == lr_at(1, CUB_STEPS, reference) == CUB["warmup_lr"]  # steps 0 and 1
    assert lr_at(1, CUB_STEPS, standard) == pytest.approx(1e-6 + (0.01 - 1e-6) / 500)  # one step ahead
    assert lr_at(501, CUB_STEPS, reference) == pytest.approx(0.0099956, abs=1e-7)  # the peak, below lr
    assert lr_at(500, CUB_STEPS, standard) == pytest.approx(0.01)
    middle = CUB_STEPS // 2  # step 18,725: the reference runs at t = 18,724
    assert lr_at(middle, CUB_STEPS, reference) == pytest.approx(0.0050054, abs=1e-7)
    assert lr_at(middle, CUB_STEPS, standard) == pytest.approx(0.0051112, abs=1e-7)
