"""docs/reproducing.md: every published number fgir compares against (fgir.tools.paper_tables), the
reference repository's command that trained it and the fgir recipe that trains it the same way.

    python -m fgir.tools.reproducing > docs/reproducing.md

tests/tools/test_reproducing.py checks that the page is what this module writes and that every
row's recipe has the published row's dataset, method, backbone, image size and setting (frozen
backbone or full fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from fgir.recipes import is_recipe_name, recipe_files
from fgir.tools.paper_tables import ANIMESION, GLSIM, GLSIM_FIGURE, ILA, PAPER_RESULTS, PaperResult

SEEDS = "1 10 100"  # the seeds the GLSim and ILA tables average over
GLSIM_MODELS = {"vit": "vit_b16 --classifier cls", "glsim": "vit_b16 --cfg_method configs/methods/glsim.yaml",
                "transfg": "transfg", "ffvt": "ffvt"}
GLSIM_CONFIG_NAMES = {"moeimouto": "moe"}  # the reference's config file names, where they differ from fgir's
ANIMESION_RECIPES = {("dafre_faces", "vit_ifa"): "dafre_faces/animesion_vit_l16_ifa",
                     ("dafre_faces", "cnn"): "dafre_faces/animesion_resnet18",
                     ("moeimouto", "vit"): "moeimouto/animesion_vit_b32"}
ANIMESION_MODELS = {"vit_ifa": "L_16 --interm_features_fc True", "cnn": "resnet18", "vit": "B_32"}
ANIMESION_DATASETS = {"dafre_faces": "danbooruFaces", "moeimouto": "moeImouto"}
# Methods whose recipe file is not named after model.method.
RECIPE_METHODS = {"cal_cnn": "cal_resnet101", "cnn": "resnet101"}
# Methods whose full fine-tuning recipe also trains on a frozen backbone with one key.
FROZEN_SWITCHES = {"transfg": "model.transfg.frozen=true", "ffvt": "model.ffvt.frozen=true"}


@dataclass(frozen=True)
class Row:
    paper: PaperResult
    reference: str  # the command in the reference repository
    recipe: str | None  # None: fgir has no recipe for this cell (a method it does not implement)
    overrides: list[str]  # key=value after the recipe (a frozen-backbone switch)
    fgir: str  # the fgir command, or why there is none


def recipe_for(result: PaperResult) -> tuple[str | None, list[str]]:
    """The recipe name and overrides that train this published row's kind of run (None: none does)."""
    if result.source == ANIMESION:
        return ANIMESION_RECIPES[(result.dataset, result.method)], []
    method = RECIPE_METHODS.get(result.method, result.method)
    name = f"{result.dataset}/{method}" + ("_448" if result.image_size == 448 else "")
    if not is_recipe_name(name):
        return None, []
    if setting_of(name) == result.setting:
        return name, []
    if result.setting == "frozen" and result.method in FROZEN_SWITCHES:
        return name, [FROZEN_SWITCHES[result.method]]
    return None, []


def setting_of(recipe: str) -> str:
    """frozen for the recipes of the ILA paper's frozen-backbone protocol (their method file includes
    common/peft.yaml), else full."""
    method_file = next(path for path in recipe_files(recipe) if path.parent.name == "methods")
    includes = yaml.safe_load(method_file.read_text()).get("include") or []
    return "frozen" if "../common/peft.yaml" in ([includes] if isinstance(includes, str) else includes) else "full"


def reference_command(result: PaperResult) -> str:
    if result.source in (GLSIM, GLSIM_FIGURE):
        if result.method == "cnn":
            return "ResNet-101 (the reference README gives no command)"
        if result.method not in GLSIM_MODELS:
            return "arkel23/GLSim: `--model_name cal` (ResNet-101)"
        name = GLSIM_CONFIG_NAMES.get(result.dataset, result.dataset)
        size = " --image_size 448" if result.image_size == 448 else ""
        return (f"arkel23/GLSim: `python tools/train.py --cfg configs/{name}_ft_is224_medaugs.yaml --lr 0.01 "
                f"--model_name {GLSIM_MODELS[result.method]}{size} --seed S`, S in {SEEDS}")
    if result.source == ILA:
        command = (f"`python tools/train.py --cfg configs/{result.dataset}_ft_weakaugs.yaml --model_name vit_b16 "
                   "--freeze_backbone --image_size 448 --classifier cls")
        if result.method == "ila_pp":
            return f"arkel23/DownSamplingInterLayerAdapter: {command} --adapter adapter --ila --ila_locs --seed S --lr 0.1`"
        return f"arkel23/DownSamplingInterLayerAdapter: {command} <the baseline's flags> --seed S --lr <swept>`"
    transfer = " --checkpoint_path <its danbooruFaces run> --transfer_learning True" if result.dataset == "moeimouto" else ""
    return (f"arkel23/animesion: `python train.py --dataset_name {ANIMESION_DATASETS[result.dataset]} --model_name "
            f"{ANIMESION_MODELS[result.method]} --pretrained True --image_size 128 --batch_size 16 "
            f"--learning_rate 0.001 --lr_scheduler warmupCosine --warmup_steps 1000 --no_epochs 50{transfer}`")


def fgir_command(result: PaperResult, recipe: str | None, overrides: list[str]) -> str:
    if recipe is None:
        return "not in fgir"
    if result.source == ANIMESION:
        transfer = " train.init_from=<its dafre_faces/animesion_vit_b32 run> train.init_new_head=true" if result.dataset == "moeimouto" else ""
        return f"`fgir train {recipe}{transfer}`"
    return f"`fgir train {' '.join([recipe, *overrides])} --seeds {SEEDS}`"


def reproducing_rows(papers: list[PaperResult] = PAPER_RESULTS) -> list[Row]:
    rows = []
    for result in papers:
        recipe, overrides = recipe_for(result)
        rows.append(Row(result, reference_command(result), recipe, overrides, fgir_command(result, recipe, overrides)))
    return rows


INTRO = """# Reproducing the papers' tables

Every number fgir compares against (`fgir results --paper`), the command of the reference
repository that trained it and the fgir command that trains it the same way. The paper recipes train
as the references do: on the official training set (`train_val.csv`) for the whole schedule, the test
split scored once with the last epoch's weights, timm's cosine schedule with the reference's step
offset, bicubic resizing on PIL images and one stochastic-depth rate in every block
(`fgir/recipes/common/reference.yaml`); Animesion's recipes follow its own trainer
(`fgir/recipes/common/animesion.yaml`). `--seeds 1 10 100` trains the three seeds the GLSim and ILA
tables average over and writes their mean +- std beside the published number
(`<train.output_dir>/<run name>/seeds_summary.md`); `fgir results RUN ...` makes the same table
from any finished runs.

Before a row: `fgir data prepare DATASET ROOT` (README, "Quickstart on a real dataset") and, where the
data is not at the recipe's `data.root`, `data.root=ROOT` after the recipe. The PEFT baselines of the
ILA table were run at the lr the paper swept for each (0.3 ... 0.003 on train -> val): `fgir sweep
RECIPE` does that sweep and retrains the chosen lr on train_val; the recipes otherwise use ILA's 0.1.
The reference README gives the command of ILA++ only; the other baselines take their own flags of
`fgir_vit/other_utils/build_args.py`. moeImouto's Animesion number is a ViT-B/32 transferred from
DAF:re faces. "not in fgir": the method (CSDNet) or that setting of it (GLSim or the IFA head on a
frozen backbone) has no fgir recipe.

| paper, table | dataset | method | size | setting | paper top-1 | reference command | fgir command |
|---|---|---|---|---|---|---|---|
"""


def reproducing_markdown(papers: list[PaperResult] = PAPER_RESULTS) -> str:
    lines = []
    for row in reproducing_rows(papers):
        paper = row.paper
        top1 = f"{'~' if paper.approximate else ''}{paper.top1:.2f}"
        lines.append(f"| {paper.source} | {paper.dataset} | {paper.method} | {paper.image_size} | {paper.setting} | "
                     f"{top1} | {row.reference} | {row.fgir} |")
    return INTRO + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reproducing_markdown(), end="")
