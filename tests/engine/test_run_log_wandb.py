"""train.wandb=true without the wandb package: one line naming the key and the fix, exit 2, no run folder."""

import sys

from conftest import tiny_overrides
from fgir.cli import main


def test_wandb_without_the_package_is_a_config_error_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    assert main(["train", *tiny_overrides(tmp_path, "train.wandb=true", "train.run_name=w"), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    assert errors == ["fgir train: error: train.wandb=true needs the wandb package: pip install wandb"]
    assert not (tmp_path / "runs" / "w").exists()
