"""Gradient-regularized training in plain PyTorch: GNP (Zhao et al. 2022), SAM, F-GR/B-GR (Karakida et al.
2023) and double backprop, with the per-worker loop that runs under torchrun, one process, or Ray Train.
Never imports Ray."""
