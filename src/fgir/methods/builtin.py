"""The methods fgir ships: one line per method module, naming what it registers; each module
registers itself at its bottom, and `method_names()` lists the built-ins in this order whatever
imported them first."""

import importlib

MODULES = (
    "fgir.models.classifier",  # vit
    "fgir.models.glsim",  # glsim
    "fgir.models.ifa",  # vit_ifa
    "fgir.models.peft.linear_probe",  # linear
    "fgir.models.peft.adapters",  # adapter, convpass
    "fgir.models.ila",  # ila, ila_plus, ila_pp
    "fgir.models.peft.vpt",  # vpt_shallow, vpt_deep
    "fgir.models.peft.lora",  # lora
    "fgir.models.peft.bitfit",  # bitfit
    "fgir.models.cnn",  # cnn
    "fgir.models.mpncov",  # mpncov
    "fgir.models.vqt",  # vqt
    "fgir.models.transfg",  # transfg
    "fgir.models.ffvt",  # ffvt
    "fgir.models.ramstrans",  # ramstrans
    "fgir.models.simtrans",  # simtrans
    "fgir.models.cal",  # cal, cal_cnn
)

for _module in MODULES:
    importlib.import_module(_module)
