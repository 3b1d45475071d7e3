"""The methods fgir ships: one import per method module; each registers itself at its bottom, in
this order (the order of `method_names()`)."""
# ruff: noqa: I001, F401

import fgir.models.classifier  # vit
import fgir.models.glsim  # glsim
import fgir.models.ifa  # vit_ifa
import fgir.models.peft.linear_probe  # linear
import fgir.models.peft.adapters  # adapter, convpass
import fgir.models.ila  # ila, ila_plus, ila_pp
import fgir.models.peft.vpt  # vpt_shallow, vpt_deep
import fgir.models.peft.lora  # lora
import fgir.models.peft.bitfit  # bitfit
import fgir.models.cnn  # cnn
import fgir.models.mpncov  # mpncov
import fgir.models.vqt  # vqt
import fgir.models.transfg  # transfg
import fgir.models.ffvt  # ffvt
import fgir.models.ramstrans  # ramstrans
import fgir.models.simtrans  # simtrans
import fgir.models.cal  # cal, cal_cnn
