"""`fgir results`: runs grouped over seeds beside the papers' numbers."""

import json

import pytest

from fgir import cli
from fgir.engine.trainer import train
from fgir.errors import FgirError
from fgir.tools.paper_tables import PAPER_RESULTS, paper_result
from fgir.tools.results import format_results, result_rows


def finished_run(tmp_path, name, dataset, method, size, seed, top1, trainable=100, total=100):
    """A run folder as the trainer writes it, with the identity and score of a paper recipe's run."""
    run = tmp_path / name
    run.mkdir()
    config = {"data": {"name": dataset, "image_size": size}, "model": {"method": method,
              "backbone": "vit_base_patch16_224.orig_in21k"}, "train": {"seed": seed}}
    (run / "test_metrics.json").write_text(json.dumps({"test": {"top1": top1}, "config": config}))
    (run / "trainable_params.json").write_text(json.dumps({"trainable": trainable, "total": total}))
    return run


def test_seeds_become_mean_and_std_beside_the_paper_number(tmp_path):
    runs = [finished_run(tmp_path, f"cub-glsim-{seed}", "cub", "glsim", 224, seed, top1)
            for seed, top1 in ((1, 90.5), (10, 91.0), (100, 91.5))]
    runs.append(finished_run(tmp_path, "soy", "soylocal", "ila_pp", 448, 1, 49.83, trainable=1, total=100))
    glsim, ila = result_rows(runs)
    assert (glsim.seeds, glsim.mean, glsim.paper.top1) == ([1, 10, 100], pytest.approx(91.0), 90.93)
    assert glsim.std == pytest.approx((2 * 0.25 / 3) ** 0.5)  # population std, as the papers' +-
    assert glsim.difference == pytest.approx(91.0 - 90.93)
    assert ila.setting == "frozen" and ila.paper.top1 == 50.83 and ila.difference == pytest.approx(-1.0)
    text = format_results([glsim, ila])
    assert "91.00 +- 0.41  90.93  +0.07" in text and "-1.00" in text
    markdown = format_results([glsim], markdown=True).splitlines()
    assert markdown[0].startswith("| dataset | method |") and markdown[1].startswith("|---|")


def test_a_run_without_a_published_number_says_so_and_a_duplicate_seed_is_refused(tmp_path):
    run = finished_run(tmp_path, "aircraft", "aircraft", "vit", 224, 1, 80.0)
    (row,) = result_rows([run])
    assert row.paper is None and "no published number" in format_results([row])
    again = finished_run(tmp_path, "aircraft-again", "aircraft", "vit", 224, 1, 81.0)
    with pytest.raises(FgirError, match="same seed 1"):
        result_rows([run, again])


def test_the_cli_reads_a_real_finished_run_and_refuses_a_folder_that_is_not_one(tiny_config, tmp_path, capsys):
    result = train(tiny_config("train.run_name=r"), progress=False)
    capsys.readouterr()
    assert cli.main(["results", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "no published number" in out
    assert cli.main(["results", str(tmp_path)]) == 2
    assert "not a finished run with a scored test split" in capsys.readouterr().err


def test_every_table_row_is_found_by_its_own_key_and_the_paper_tables_print():
    for result in PAPER_RESULTS:
        assert paper_result(result.dataset, result.method, result.backbone + "_224", result.image_size,
                            result.setting) == result
    assert paper_result("cub", "glsim", "vit_base_patch16_224", 224, "full").top1 == 90.93
    assert paper_result("cotton", "ila_plus", "vit_base_patch16_224", 448, "frozen").top1 == 53.33
    assert cli.main(["results", "--paper"]) == 0
