"""`fgir train` says what it is about to do before the first epoch, and a slow run's throughput
reads "2.5 img/s", not "0 img/s" (epoch line and progress bar)."""

import itertools

from fgir.engine import trainer
from fgir.engine.trainer import train


def test_the_header_names_method_weights_data_device_batch_steps_schedule_and_folder(tiny_config, tmp_path, capsys):
    result = train(tiny_config("train.run_name=r", "train.grad_accum_steps=2", "train.precision=bf16",
                               "train.warmup_steps=1", "train.min_lr=0.0001"), progress=False)
    out = capsys.readouterr().out
    header = out[:out.index("epoch 1/2")].splitlines()
    assert header == [
        "method   vit on vit_tiny_patch16_224, randomly initialised (model.pretrained=false)",
        "data     synthetic at 32 px: 3 classes; 18 train, 6 val, 9 test images",
        "device   cpu, bf16",
        "batch    4, 2 micro-batches per optimizer step",
        "steps    2 per epoch x 2 epochs = 4 optimizer steps",
        "schedule sgd, warm-up 1 steps from 1e-06 to lr 0.01, cosine to 0.0001",
        f"run      {result.run_dir}",
    ]


def test_a_resumed_run_names_its_checkpoint_as_the_weight_source(tiny_config, capsys):
    part = train(tiny_config("train.run_name=r"), progress=False, stop_after_epochs=1)
    capsys.readouterr()
    train(tiny_config(f"train.resume={part.run_dir}"), progress=False)
    out = capsys.readouterr().out
    assert (f"method   vit on vit_tiny_patch16_224, weights from {part.run_dir}/checkpoints/last.safetensors"
            in out.splitlines())
    assert f"run      {part.run_dir} (resumed)" in out.splitlines()


class SlowClock:
    """time.perf_counter of a machine where every reading is 1.6 s after the previous one."""

    def __init__(self):
        self.readings = itertools.count(step=1.6)

    def perf_counter(self):
        return next(self.readings)


class RecordingBar:
    """tqdm stand-in that keeps every postfix the trainer sets."""

    postfixes: list[dict] = []

    def __init__(self, iterable, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **values):
        RecordingBar.postfixes.append(values)


def test_a_slow_run_shows_its_throughput_with_one_decimal(tiny_config, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "time", SlowClock())
    monkeypatch.setattr(trainer, "tqdm", RecordingBar)
    RecordingBar.postfixes.clear()
    train(tiny_config("train.run_name=r", "train.epochs=1"), progress=False)
    epoch_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1"))
    # 16 images over the epoch's readings, 1.6 s apart: a few images per second, shown as "x.y img/s".
    rate = epoch_line.split("  ")[3]
    assert rate.endswith(" img/s") and "." in rate and float(rate.split()[0]) < 10
    assert RecordingBar.postfixes and all("." in postfix["img_s"] for postfix in RecordingBar.postfixes)
    assert trainer.format_rate(12.6) == "13" and trainer.format_rate(4.25) == "4.2"
