"""Triton kernels of fastrnn (installed as fastrnn.kernels)."""
