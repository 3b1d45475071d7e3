"""A run with DataLoader workers ends when its main process fails, in real subprocesses: the workers
ignore SIGTERM (see ignore_stop_signals), so nothing but fgir itself can end them at exit."""

import io
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from conftest import tiny_overrides
from fgir.cli import main

# Far above the few seconds these commands take; reached only if the process hangs.
TIMEOUT_S = 120


def run_to_the_end(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command`; a process (or worker) still alive after TIMEOUT_S fails the test instead of hanging it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{command[3:5]} still running after {TIMEOUT_S} s; stderr:\n{err[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def fgir(*args: str) -> list[str]:
    return [sys.executable, "-m", "fgir.cli", *args]


def truncated_jpeg(path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def list_truncated_jpeg(root, split: str) -> str:
    """Replace the split's first image by a truncated JPEG (listed under its .jpg name); its path."""
    csv = root / f"{split}.csv"
    header, first, *rest = csv.read_text().splitlines()
    _, relative, *box = first.split(",")
    jpeg = relative.replace(".png", ".jpg")
    truncated_jpeg(root / jpeg)
    csv.write_text("\n".join([header, ",".join([first.split(",")[0], jpeg, *box]), *rest]) + "\n")
    return str(root / jpeg)


def assert_one_line_naming(result: subprocess.CompletedProcess, verb: str, path: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert lines == [lines[0]] and lines[0].startswith(f"fgir {verb}: error: cannot read image {path}"), lines


def test_train_with_workers_and_a_truncated_jpeg_exits_2_with_one_line(tmp_path):
    overrides = tiny_overrides(tmp_path, "train.run_name=r")
    assert main(["data", "check", *overrides, "--images", "exists", "--no-progress"]) == 0  # generates the set
    path = list_truncated_jpeg(tmp_path / "synthetic", "train")
    # data.preflight=off: the image check before the first epoch would catch the file before any
    # worker starts; this test is about the workers.
    result = run_to_the_end(fgir("train", *overrides, "data.num_workers=2", "data.preflight=off", "--no-progress"))
    assert_one_line_naming(result, "train", path)


def test_eval_with_workers_and_a_truncated_jpeg_exits_2_with_one_line(tmp_path):
    overrides = tiny_overrides(tmp_path, "train.run_name=r", "train.epochs=1")
    assert main(["train", *overrides, "--no-progress"]) == 0
    path = list_truncated_jpeg(tmp_path / "synthetic", "test")
    result = run_to_the_end(fgir("eval", str(tmp_path / "runs" / "r"), "data.num_workers=2", "data.preflight=off",
                                 "--no-progress"))
    assert_one_line_naming(result, "eval", path)


BROKEN_DATASET = """
import torch
from torch.utils.data import Dataset
from fgir.data.sampler import build_loader

class Broken(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, key):
        if key[0] == 5 and {in_worker}:
            raise RuntimeError("sample 5 is broken")
        return torch.zeros(2)

loader = build_loader(Broken(), batch_size=2, train=False, seed=0, num_workers=2)  # referenced, as in a trainer
for i, batch in enumerate(loader):
    if i == 1 and not {in_worker}:
        raise RuntimeError("the main process failed")
"""


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker-raises", "main-raises"])
def test_any_exception_in_the_main_process_ends_it_and_its_workers(tmp_path, in_worker):
    script = tmp_path / "broken.py"
    script.write_text(textwrap.dedent(BROKEN_DATASET.format(in_worker=in_worker)))
    result = run_to_the_end([sys.executable, str(script)])
    assert result.returncode == 1  # an uncaught exception: a bug, so its traceback stays
    assert "Traceback" in result.stderr and ("sample 5 is broken" if in_worker else "the main process failed") in result.stderr
