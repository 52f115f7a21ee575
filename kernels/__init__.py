"""fastrnn's Triton kernels (installed as ``fastrnn.kernels``): fused recurrences of the LSTM and
GRU cells, forward and backward, for one layer and direction.  A leaf library: it imports torch
and triton only.  ``launch`` is the host API: ``launch.forward`` / ``launch.backward``.
"""
