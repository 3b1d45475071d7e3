"""Building blocks of the methods, one per module (as DINOv2's `layers/`): they know tokens and grids,
not configs or methods."""
