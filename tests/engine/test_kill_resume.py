"""Crash safety end to end, in real subprocesses: SIGKILL at random moments (benchmarks/kill_resume.py,
a short version here), and SIGTERM to a run whose DataLoader workers get the signal too."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgir.engine.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


def kill_resume_module():
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_random_sigkills_then_resume_end_bit_identical(tmp_path):
    module = kill_resume_module()
    report = module.kill_and_resume(tmp_path, kills=3, epochs=2, seed=1, log=lambda *_: None)
    assert report.kills >= 3
    assert report.identical_weights and report.identical_metrics


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_a_resumable_checkpoint(tmp_path):
    module = kill_resume_module()
    overrides = module.tiny_run_overrides(tmp_path, epochs=50)  # still running when signalled
    overrides = [o for o in overrides if not o.startswith(("data.num_workers", "train.checkpoint_every_steps"))]
    overrides += ["data.num_workers=2", "train.run_name=r"]
    process = subprocess.Popen(module.train_command(overrides), env=module.child_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run_dir = tmp_path / "runs" / "r"
    deadline = time.monotonic() + 300
    # Wait for training to be under way (the first epoch's checkpoint), then signal the whole group:
    # the main process and its workers, as Ctrl-C or a batch scheduler would.
    while not (run_dir / "checkpoints" / "last.safetensors").is_file() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2, err  # `fgir train` reports TrainingInterrupted as an error
    assert "SIGTERM received: stopped at" in err and f"train.resume={run_dir}" in err
    assert "DataLoader worker" not in err and "Traceback" not in err
    last = load_checkpoint(run_dir / "checkpoints" / "last.safetensors", with_train_state=True)
    assert 1 <= last.epoch < 50 and last.global_step >= 6  # 6 steps per epoch
