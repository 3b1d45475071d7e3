"""`fgir hub push` and `hf-hub:ORG/NAME` against a stand-in Hub on 127.0.0.1 (tests/tools/stand_in_hub.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every Hub
call runs in a fresh Python process with that environment (a few CLI calls per process, since each
process pays for importing torch), in a fresh working folder.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
from stand_in_hub import StandInHub

from conftest import TINY, save_random_vit, tiny_overrides
from fgir.cli import main
from fgir.config import load_config
from fgir.engine.trainer import train
from fgir.hub import MANIFEST
from fgir.tools.hub_push import manifest, staged_files
from fgir.tools.model_card import model_card, read_run, write_model_card

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[2] / "src"
# Runs each [argv, ...] of its JSON argument: `fgir <argv>`, or ["load", SOURCE, IMAGE] for
# fgir.load(SOURCE).predict(IMAGE); prints [[exit status, stdout, stderr], ...] as JSON.
BATCH = """
import contextlib, io, json, sys
import fgir
from fgir.cli import main
from fgir.tools.predictor import format_predictions
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if argv[0] == "load":
            print(format_predictions(fgir.load(argv[1], device="cpu").predict(argv[2], topk=3), as_json=True))
            status = 0
        else:
            status = main(argv)
    results.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_batch(hub: StandInHub, home: Path, cwd: Path, *argvs: list[str], offline: bool = False,
              token: str | None = None) -> list[tuple[int, str, str]]:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_ENDPOINT": hub.url, "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_OFFLINE": "1" if offline else "0", "OMP_NUM_THREADS": "1"}
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    done = subprocess.run([sys.executable, "-c", BATCH, json.dumps(argvs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(result) for result in json.loads(done.stdout.splitlines()[-1])]


def predict(source: str, image: Path) -> list[str]:
    return ["predict", source, str(image), "--json", "--topk", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Two tiny runs (a full vit and an adapter-only linear probe on a local backbone file) pushed,
    pulled in a fresh folder, then pulled again with the Hub stopped; the outcome of every call."""
    root = tmp_path_factory.mktemp("hub")
    save_random_vit(root / "backbone.safetensors", img_size=32, **TINY)
    full = train(load_config(None, tiny_overrides(root, "train.run_name=full")), progress=False).run_dir
    adapter = train(load_config(None, tiny_overrides(
        root, "train.run_name=probe", "model.method=linear", "model.pretrained=true",
        f"model.weights={root / 'backbone.safetensors'}")), progress=False).run_dir
    image = root / "synthetic" / "images"
    image = next(p for p in sorted(image.rglob("*.png")))
    home, out = root / "hf-home", {}
    with StandInHub() as hub:
        out["push"] = run_batch(hub, home, root / "pusher",
                                ["hub", "push", str(full), "org/full"], ["hub", "push", str(adapter), "org/probe"],
                                predict(str(full), image), predict(str(adapter), image),
                                ["hub", "push", str(full), "org/secret", "--revision", "v1", "--private"])
        out["files"] = {repo: hub.files(repo) for repo in ("org/full", "org/probe")}
        out["v1"], out["main"] = hub.files("org/secret", "v1"), hub.files("org/secret", "main")
        out["private"] = hub.repos["org/secret"].private
        out["front_matter"] = hub.front_matter
        # The backbone file leaves this machine's disk: pulling must bring it.
        (root / "backbone.safetensors").rename(root / "backbone-moved.safetensors")
        out["pull"] = run_batch(hub, home, root / "fresh", predict("hf-hub:org/full", image),
                                predict("hf-hub:org/probe@main", image), ["load", "hf-hub:org/full", str(image)],
                                ["load", "hf-hub:org/probe", str(image)], predict("hf-hub:org/missing", image),
                                predict("hf-hub:org/full@v9", image), predict("hf-hub:", image),
                                ["hub", "push", str(root), "org/not-a-run"],
                                ["eval", "hf-hub:org/full", "--no-progress", "--device", "cpu"],
                                ["calibrate", "hf-hub:org/full", "--no-progress"],
                                ["bench", "hf-hub:org/probe", "--iters", "1", "--warmup", "0", "--device", "cpu"])
        hub.token = "hf_right"
        out["refused"] = run_batch(hub, home, root / "fresh", ["hub", "push", str(full), "org/full"],
                                   token="hf_wrong")
    (root / "backbone-moved.safetensors").rename(root / "backbone.safetensors")
    out["offline"] = run_batch(hub, home, root / "offline", predict("hf-hub:org/full", image),
                               predict("hf-hub:org/probe", image), predict("hf-hub:org/never", image), offline=True)
    out["unreachable"] = run_batch(hub, home, root / "offline", predict("hf-hub:org/full", image),
                                   predict("hf-hub:org/never", image), ["hub", "push", str(full), "org/full"])
    return dict(out, full=full, adapter=adapter, root=root)


def test_push_uploads_every_file_of_the_run_byte_for_byte(scenario):
    assert [status for status, _, _ in scenario["push"]] == [0, 0, 0, 0, 0], scenario["push"]
    full, files = scenario["full"], scenario["files"]["org/full"]
    run_files = ["config.yaml", "metrics.json", "metrics.csv", "test_metrics.json", "trainable_params.json",
                 "checkpoints/best.safetensors"]
    assert sorted(files) == sorted([*run_files, "README.md", MANIFEST])
    for name in run_files:
        assert files[name] == (full / name).read_bytes(), name
    assert files["README.md"].decode() == model_card(read_run(full), "org/full")
    assert json.loads(files[MANIFEST]) == {"format": "fgir-hub/1", "checkpoint": "checkpoints/best.safetensors"}
    assert "pushed 8 files to org/full" in scenario["push"][0][1]
    # --revision: a new branch holds the run, main stays as created; --private: a private repository
    assert {name: scenario["v1"][name] for name in run_files} == {name: files[name] for name in run_files}
    assert scenario["main"] == {} and scenario["private"]


def test_an_adapter_only_run_ships_its_backbone_file(scenario):
    files, adapter = scenario["files"]["org/probe"], scenario["adapter"]
    backbone = scenario["root"] / "backbone.safetensors"
    assert files["backbone/backbone.safetensors"] == backbone.read_bytes()
    assert files["checkpoints/best.safetensors"] == (adapter / "checkpoints" / "best.safetensors").read_bytes()
    manifest = json.loads(files[MANIFEST])
    assert manifest["backbone"]["file"] == "backbone/backbone.safetensors"
    assert manifest["backbone"]["model"] == "vit_tiny_patch16_224" and len(manifest["backbone"]["sha256"]) == 64
    card = files["README.md"].decode()
    assert "`backbone/backbone.safetensors`" in card and manifest["backbone"]["sha256"] in card
    # the adapter-only checkpoint really lacks the backbone: it is the small file
    pushed = safetensors.torch.load(files["checkpoints/best.safetensors"])
    assert not any(key.startswith("backbone.") and "blocks" in key for key in pushed)
    assert scenario["front_matter"]["library_name"] == "fgir"


def test_a_pulled_run_predicts_bit_identically_in_a_fresh_folder(scenario):
    local_full, local_probe = scenario["push"][2][1], scenario["push"][3][1]
    (full, _, full_err), (probe, _, probe_err), (loaded_full, _, _), (loaded_probe, _, _) = scenario["pull"][:4]
    assert full == probe == 0, (full_err, probe_err)
    assert scenario["pull"][0][1] == local_full and scenario["pull"][1][1] == local_probe
    assert json.loads(scenario["pull"][2][1]) == json.loads(local_full)
    assert json.loads(scenario["pull"][3][1]) == json.loads(local_probe)
    assert loaded_full == loaded_probe == 0


def test_offline_the_cache_serves_the_run_and_an_uncached_one_fails_naming_it(scenario):
    (full, full_out, err), (probe, probe_out, _), (never, _, never_err) = scenario["offline"]
    assert full == probe == 0, err
    assert full_out == scenario["push"][2][1] and probe_out == scenario["push"][3][1]
    assert never == 2 and len(never_err.strip().splitlines()) == 1
    assert "org/never@main" in never_err and "HF_HUB_OFFLINE" in never_err and "hub cache at" in never_err


def test_with_the_hub_unreachable_the_cache_serves_and_the_rest_fails_in_one_line(scenario):
    (full, full_out, _), (never, _, never_err), (push, _, push_err) = scenario["unreachable"]
    assert full == 0 and full_out == scenario["push"][2][1]
    assert never == 2 and "org/never@main" in never_err and "ConnectError" in never_err
    assert push == 2 and "org/full" in push_err and len(push_err.strip().splitlines()) == 1


def test_unknown_repo_revision_empty_name_and_a_non_run_fail_with_exit_2(scenario):
    missing, revision, empty, not_run = scenario["pull"][4:8]
    assert missing[0] == 2 and "org/missing@main" in missing[2] and "no such repository" in missing[2]
    assert revision[0] == 2 and "org/full@v9" in revision[2] and "no such revision" in revision[2]
    assert "hub cache" not in revision[2]  # the Hub said it does not exist: no cache lookup
    assert empty[0] == 2 and "'hf-hub:'" in empty[2]
    assert not_run[0] == 2 and "not a run folder" in not_run[2]
    for _, _, err in (missing, revision, empty, not_run):
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_refused_token_fails_the_push_in_one_line(scenario):
    [(status, _, err)] = scenario["refused"]
    assert status == 2 and "HTTP 401" in err and "org/full" in err and len(err.strip().splitlines()) == 1


def test_push_of_a_missing_folder_needs_no_hub(tmp_path, capsys):
    assert main(["hub", "push", str(tmp_path / "nothing"), "org/name"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["hub", "push", str(tmp_path), "no-org"]) == 2
    assert "REPO_ID 'no-org': expected ORG/NAME" in capsys.readouterr().err


def test_other_verbs_take_a_hub_run_without_writing_into_the_cache(scenario):
    (evaluated, _, eval_err), (calibrated, _, calibrate_err), (benched, bench_out, _) = scenario["pull"][8:11]
    assert evaluated == 0, eval_err
    report = json.loads((scenario["root"] / "fresh" / "eval-full-test" / "metrics.json").read_text())
    local = json.loads((scenario["full"] / "test_metrics.json").read_text())["test"]
    assert report["top1"] == local["top1"]
    assert calibrated == 2 and "hf download org/full --local-dir" in calibrate_err
    assert benched == 0 and json.loads(bench_out)["model"] == "linear/vit_tiny_patch16_224"


def test_the_model_card_reads_the_run_and_names_a_hub_backbone(scenario, tmp_path):
    run = read_run(scenario["adapter"])
    card = write_model_card(scenario["adapter"], tmp_path / "README.md")
    text = card.read_text()
    test = json.loads((scenario["adapter"] / "test_metrics.json").read_text())["test"]
    assert text.startswith("---\nlibrary_name: fgir\n") and f"| test | 9 | {test['top1']:.2f} |" in text
    assert f"Trainable parameters: {run.trainable['trainable']:,} of" in text
    assert "--weights PATH" in text  # no repository to ship the backbone in: the user gives it
    on_hub = replace(run, backbone=replace(run.backbone, weights=None))
    assert "base_model: timm/vit_tiny_patch16_224" in model_card(on_hub, "org/probe")
    assert manifest(on_hub, staged_files(on_hub))["backbone"] == {
        "model": "vit_tiny_patch16_224", "sha256": run.backbone.sha256, "tensors": run.backbone.tensors,
        "source": "timm's Hugging Face Hub weights"}


def test_the_model_card_puts_the_papers_number_beside_the_run(scenario, tmp_path):
    run = tmp_path / "cub-glsim"
    shutil.copytree(scenario["full"], run)
    summary = json.loads((run / "test_metrics.json").read_text())
    summary["config"]["data"].update(name="cub", image_size=224)
    summary["config"]["model"].update(method="glsim", backbone="vit_base_patch16_224.orig_in21k")
    (run / "test_metrics.json").write_text(json.dumps(summary))
    top1 = summary["test"]["top1"]
    assert (f"Published: test top-1 90.93% (GLSim (arXiv:2407.12891) Table 4); this run {top1 - 90.93:+.2f} points."
            in model_card(read_run(run)))
    assert "No published number for synthetic / vit / 32 px / full fine-tuning" in model_card(read_run(scenario["full"]))
