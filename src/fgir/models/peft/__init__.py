"""Parameter-efficient methods on a frozen backbone: ILA (fgir.models.ila) and the PEFT baselines."""
