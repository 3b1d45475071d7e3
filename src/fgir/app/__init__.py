"""The `fgir serve` web demo: upload a picture, see the top-5 classes and where the model looked."""
