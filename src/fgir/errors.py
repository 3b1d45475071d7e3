"""The base of every error caused by what the user gave fgir (a config, a dataset, a checkpoint,
weights). The CLI prints these as one readable line; anything else is a bug and keeps its traceback."""


class FgirError(Exception):
    pass
