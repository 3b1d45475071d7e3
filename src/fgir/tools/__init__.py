"""Tools built on a trained checkpoint: evaluation reports, prediction, benchmarking, plots.

Modules are imported on use (`from fgir.tools.predictor import Predictor`), so importing one tool
does not pull in the others' dependencies (e.g. matplotlib).
"""
