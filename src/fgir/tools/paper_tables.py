"""The papers' published top-1 accuracies, as data: what `fgir results` puts beside a run's number;
and their published costs (selector FLOPs, throughput, trainable parameters), what
`benchmarks/cost_tables.py` puts beside fgir's.

Sources (top-1 %, test split):
- GLSim, Rios et al., arXiv:2407.12891, Table 4: ten datasets at 224 px, ViT-B/16 backbones and
  ResNet-101 for CAL, mean of 3 seeds (1, 10, 100); CUB at 448 px from the paper's accuracy /
  throughput figure (read off a bar chart, +-0.1).
- ILA, Rios et al., arXiv:2409.11051, Table 1: five Ultra-FGVC sets at 448 px on ViT-B/16; every row
  trains on the frozen backbone except those marked full (`*` in the paper).
- Animesion / DAF:re, Rios et al., arXiv:2101.08674: DAF:re faces at 128 px (ViT-L/16 + IFA head,
  and the 2021 version's ResNet-18), moeImouto with ViT-B/32.
"""

from __future__ import annotations

from dataclasses import dataclass

GLSIM = "GLSim (arXiv:2407.12891) Table 4"
GLSIM_FIGURE = "GLSim (arXiv:2407.12891) CUB accuracy/throughput figure"
ILA = "ILA (arXiv:2409.11051) Table 1"
ANIMESION = "Animesion (arXiv:2101.08674)"


@dataclass(frozen=True)
class PaperResult:
    dataset: str  # data.name
    method: str  # model.method (for comparison methods not in fgir yet: the name the next issue gives them)
    backbone: str  # timm name prefix the run's model.backbone must start with
    image_size: int
    setting: str  # full: every weight trains; frozen: the backbone is frozen
    top1: float
    source: str
    approximate: bool = False  # read off a figure


def _table(source: str, backbone: str, image_size: int, setting: str, methods: list[str],
           rows: dict[str, list[float]]) -> list[PaperResult]:
    return [PaperResult(dataset, method, backbone, image_size, setting, value, source)
            for dataset, values in rows.items() for method, value in zip(methods, values, strict=True)]


GLSIM_DATASETS = {
    "cub": [90.11, 90.49, 90.05, 90.93],
    "dafb": [91.78, 92.87, 91.49, 93.36],
    "dogs": [91.36, 90.68, 91.49, 92.01],
    "flowers": [99.45, 99.44, 99.32, 99.48],
    "food": [92.43, 92.76, 91.89, 92.97],
    "inat17": [69.38, 72.34, 69.09, 73.50],
    "moeimouto": [96.47, 96.59, 96.67, 96.67],
    "nabirds": [87.36, 88.76, 86.63, 89.11],
    "pets": [94.10, 93.93, 94.34, 95.01],
    "vegfru": [95.77, 95.91, 95.58, 96.14],
}
GLSIM_CAL = {"cub": 88.44, "dafb": 95.15, "dogs": 89.78, "flowers": 98.14, "food": 89.71, "inat17": 69.29,
             "moeimouto": 97.55, "nabirds": 88.33, "pets": 93.89, "vegfru": 90.33}

ILA_DATASETS = ("cotton", "soyageing", "soygene", "soyglobal", "soylocal")
ILA_ROWS = {  # method, setting, then one value per ILA_DATASETS entry
    ("linear", "frozen"): [39.03, 48.61, 21.31, 24.97, 28.72],
    ("mpncov", "frozen"): [43.89, 40.43, 20.22, 25.79, 27.94],
    ("vit_ifa", "frozen"): [44.58, 56.01, 33.09, 35.82, 29.22],
    ("transfg", "frozen"): [51.67, 57.54, 38.79, 45.35, 38.06],
    ("ffvt", "frozen"): [51.94, 69.93, 49.97, 47.70, 42.22],
    ("cal", "frozen"): [44.03, 51.16, 23.03, 34.98, 31.61],
    ("ramstrans", "frozen"): [38.47, 50.73, 25.83, 25.17, 29.67],
    ("glsim", "frozen"): [45.70, 56.58, 33.04, 39.85, 29.95],
    ("vqt", "frozen"): [50.97, 65.65, 36.80, 33.99, 36.33],
    ("vpt_shallow", "frozen"): [38.19, 49.12, 27.43, 27.37, 28.39],
    ("vpt_deep", "frozen"): [43.19, 60.76, 38.28, 36.83, 25.28],
    ("convpass", "frozen"): [48.33, 60.18, 53.43, 45.13, 34.22],
    ("adapter", "frozen"): [48.19, 73.31, 57.04, 47.27, 36.83],
    ("transfg", "full"): [54.58, 72.16, 22.38, 21.24, 40.67],
    ("simtrans", "full"): [54.58, 34.76, 15.46, 70.69, 25.00],
    ("csdnet", "full"): [57.92, 75.39, 70.82, 56.30, 46.17],
    ("ila_plus", "frozen"): [53.33, 68.79, 52.65, 48.29, 46.56],
    ("ila_pp", "frozen"): [55.42, 75.00, 62.19, 58.14, 50.83],
}

PAPER_RESULTS: list[PaperResult] = [
    *_table(GLSIM, "vit_base_patch16", 224, "full", ["vit", "transfg", "ffvt", "glsim"], GLSIM_DATASETS),
    *[PaperResult(dataset, "cal_cnn", "resnet101", 224, "full", value, GLSIM) for dataset, value in GLSIM_CAL.items()],
    PaperResult("cub", "vit", "vit_base_patch16", 448, "full", 91.85, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "glsim", "vit_base_patch16", 448, "full", 92.1, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "transfg", "vit_base_patch16", 448, "full", 91.7, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "ffvt", "vit_base_patch16", 448, "full", 91.6, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "cnn", "resnet101", 224, "full", 82.7, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "cnn", "resnet101", 448, "full", 86.4, GLSIM_FIGURE, approximate=True),
    PaperResult("cub", "cal_cnn", "resnet101", 448, "full", 90.9, GLSIM_FIGURE, approximate=True),
    *[PaperResult(dataset, method, "vit_base_patch16", 448, setting, value, ILA)
      for (method, setting), values in ILA_ROWS.items()
      for dataset, value in zip(ILA_DATASETS, values, strict=True)],
    PaperResult("dafre_faces", "vit_ifa", "vit_large_patch16", 128, "full", 90.10, ANIMESION),
    PaperResult("dafre_faces", "cnn", "resnet18", 128, "full", 69.09, ANIMESION),
    PaperResult("moeimouto", "vit", "vit_base_patch32", 128, "full", 90.83, ANIMESION),
]


def paper_result(dataset: str, method: str, backbone: str, image_size: int, setting: str,
                 papers: list[PaperResult] = PAPER_RESULTS) -> PaperResult | None:
    """The published number in `papers` for a run of this kind, or None when no table has one."""
    for result in papers:
        if (result.dataset, result.method, result.image_size, result.setting) == (dataset, method, image_size, setting) \
                and backbone.startswith(result.backbone):
            return result
    return None


# --- published costs ------------------------------------------------------------------------------
# GLSim (arXiv:2407.12891) Table 1: selector cost on ViT-B/16 in MFLOPs at 224, 448, 768 and 1024 px;
# the paper's own percentage of the backbone where it prints one. Its selector formulas count each
# multiply and each add once, its backbone (the percentages' base) is counted in multiply-accumulates.
GLSIM_SELECTOR_SIZES = (224, 448, 768, 1024)
GLSIM_SELECTOR_MFLOPS = {
    "psm": [8.2e3, 6.2e5, 1.5e7, 9.1e7],
    "rollout": [1.7e2, 1.1e4, 2.7e5, 1.5e6],
    "maws": [0.13, 0.53, 1.5, 2.7],
    "gls": [0.45, 1.8, 5.3, 9.4],
}
GLSIM_SELECTOR_PERCENT = {
    "psm": [46.5, 781, 5065, 13674],
    "rollout": [0.98, 13.6, 91, 229],
    "maws": [None, None, None, None],
    "gls": [0.0026, 0.0023, None, 0.0014],
}
# GLSim's CUB accuracy / throughput figure: images per second on one GPU, read off a bar chart
# (+-5 img/s), keyed by model.method (cnn: ResNet-101; cal: CAL on ResNet-101).
GLSIM_THROUGHPUT = {
    224: {"vit": 440, "glsim": 330, "transfg": 335, "ffvt": 410, "cal": 127, "cnn": 445},
    448: {"vit": 120, "glsim": 65, "transfg": 38, "ffvt": 82, "cal": 43, "cnn": 226},
}
# ILA (arXiv:2409.11051) Table 1: TTP, trainable parameters summed over the five ILA_DATASETS, in millions.
ILA_TTP = {
    ("linear", "frozen"): 1.7, ("mpncov", "frozen"): 4.9, ("vit_ifa", "frozen"): 1.7, ("transfg", "frozen"): 37.2,
    ("ffvt", "frozen"): 37.2, ("cal", "frozen"): 55.6, ("ramstrans", "frozen"): 1.7, ("glsim", "frozen"): 37.2,
    ("vqt", "frozen"): 106.0, ("vpt_shallow", "frozen"): 2.1, ("vpt_deep", "frozen"): 6.3, ("convpass", "frozen"): 3.4,
    ("adapter", "frozen"): 3.3, ("transfg", "full"): 434.3, ("simtrans", "full"): 497.0, ("csdnet", "full"): 432.0,
    ("ila_plus", "frozen"): 2.6, ("ila_pp", "frozen"): 3.5,
}
