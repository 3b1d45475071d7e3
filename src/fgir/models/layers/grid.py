"""The patch grid of a token sequence: (rows, columns), row-major after the prefix tokens."""

Grid = tuple[int, int]
