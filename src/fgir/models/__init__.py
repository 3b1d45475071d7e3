"""Models: the ViT backbone and its weight sources, heads, and the methods built around them."""
