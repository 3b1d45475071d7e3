"""fgir: fine-grained image recognition with vision transformers."""
