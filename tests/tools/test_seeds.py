"""`fgir train RECIPE --seeds 1 10 100`: a run per seed, their mean +- std beside the papers' number,
restartable, and named in each seed's model card."""

import hashlib
import json
import statistics

import pytest

from conftest import tiny_overrides
from fgir.cli import main
from fgir.config import ConfigError, load_config
from fgir.tools import seeds as seeds_module
from fgir.tools.paper_tables import PaperResult
from fgir.tools.seeds import train_seeds

SEEDS = [1, 10, 100]
# A paper table of one row for the tiny synthetic recipe: the published number its seeds are compared with.
FIXTURE_PAPER = [PaperResult("synthetic", "vit", "vit_tiny_patch16", 32, "full", 50.0, "fixture table")]


def tiny(tmp_path, *extra):
    return tiny_overrides(tmp_path, "train.epochs=1", "train.warmup_steps=1", "train.run_name=tiny", *extra)


def weights_digest(run_dir):
    return hashlib.sha256((run_dir / "checkpoints" / "last.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("seeds")
    result = train_seeds(load_config(None, tiny(tmp_path)), SEEDS, progress=False, papers=FIXTURE_PAPER)
    return tmp_path, result


def test_each_seed_is_its_own_run_and_the_summary_is_their_mean_and_std(three_seeds):
    tmp_path, result = three_seeds
    assert result.seeds_dir == tmp_path / "runs" / "tiny"
    assert result.run_dirs == [result.seeds_dir / f"seed_{seed}" for seed in SEEDS]
    scored = [json.loads((run / "test_metrics.json").read_text()) for run in result.run_dirs]
    assert [entry["config"]["train"]["seed"] for entry in scored] == SEEDS
    assert len({weights_digest(run) for run in result.run_dirs}) == 3  # the seeds trained different weights
    top1 = [entry["test"]["top1"] for entry in scored]
    summary = json.loads((result.seeds_dir / "seeds_summary.json").read_text())
    assert summary == result.summary and summary["seeds"] == SEEDS
    assert summary["runs"] == ["seed_1", "seed_10", "seed_100"]
    assert summary["test"]["top1"] == {"mean": pytest.approx(statistics.fmean(top1)),
                                       "std": pytest.approx(statistics.pstdev(top1)), "values": top1}
    assert {"top1", "top5", "mean_class_acc"} <= set(summary["test"])


def test_the_summary_table_sets_the_seeds_beside_the_paper_number(three_seeds):
    _, result = three_seeds
    top1 = result.summary["test"]["top1"]
    mean, std = top1["mean"], top1["std"]
    table = (result.seeds_dir / "seeds_summary.md").read_text()
    values = " | ".join(f"{value:.2f}" for value in top1["values"])
    assert f"| top1 | {mean:.2f} +- {std:.2f} | {values} |" in table
    assert (f"| synthetic | vit | vit_tiny_patch16_224 | 32 | full | 1 10 100 | {mean:.2f} +- {std:.2f} | "
            f"50.00 | {mean - 50:+.2f} | fixture table |") in table


def test_run_again_the_finished_seeds_are_skipped_a_stopped_one_resumed_and_the_cards_name_the_seeds(
        three_seeds, capsys):
    tmp_path, result = three_seeds
    first, last = result.run_dirs[0], result.run_dirs[-1]
    before = (first / "test_metrics.json").read_text()
    scored_last = json.loads((last / "test_metrics.json").read_text())["test"]
    (last / "test_metrics.json").unlink()  # seed 100 stopped after its last checkpoint, before test
    # --seeds before the overrides: argparse hands them to the option, which gives them back.
    assert main(["train", "--no-progress", "--seeds", *map(str, SEEDS), *tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "seed 1: done before" in out and "seed 10: done before" in out and "resumed" in out
    assert (first / "test_metrics.json").read_text() == before
    assert json.loads((last / "test_metrics.json").read_text())["test"]["top1"] == scored_last["top1"]
    for run in result.run_dirs:
        card = (run / "README.md").read_text()
        assert "One of 3 runs of this recipe with seeds 1, 10, 100" in card
        assert f"{result.summary['test']['top1']['mean']:.2f} +- " in card


def test_a_finished_seed_with_other_settings_is_refused_not_averaged(three_seeds, monkeypatch):
    tmp_path, _ = three_seeds
    monkeypatch.setattr(seeds_module, "train", lambda *a, **k: pytest.fail("nothing should train"))
    with pytest.raises(ConfigError, match=r"seed_1 finished with other settings \(train.label_smoothing: the run "
                                          r"has 0.0, given 0.1\); give another train.run_name"):
        train_seeds(load_config(None, tiny(tmp_path, "train.label_smoothing=0.1")), SEEDS, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1", "1"], "--seeds must differ, got 1 1"),
    (["--seeds", "one"], "--seeds takes whole numbers, e.g. --seeds 1 10 100; got 'one'"),
    (["--seeds", "1", "--stop-after-epochs", "1"], "--stop-after-epochs does not apply to --seeds"),
    (["--seeds", "1", "data.test=null"], "--seeds reports the test metrics of each seed: set data.test"),
])
def test_bad_seed_requests_are_refused_in_one_line(tmp_path, capsys, argv, message):
    assert main(["train", *tiny(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
