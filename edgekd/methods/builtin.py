"""edgekd's own distillation methods: importing this module registers them (the method registry does,
the first time it is asked for a name). A new method file adds its line here."""

from edgekd.methods import at, codistill, crd, dkd, hints, kd, mean_teacher, nst, prokt, specialists, tfkd

__all__ = ["at", "codistill", "crd", "dkd", "hints", "kd", "mean_teacher", "nst", "prokt", "specialists", "tfkd"]
