"""fapo_mini: a minimal plain-PyTorch reimplementation of FAPO (arXiv 2510.22543)."""
