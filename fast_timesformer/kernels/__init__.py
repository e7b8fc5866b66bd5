"""Triton kernels of the ``triton`` backend and their plain-PyTorch twin."""
