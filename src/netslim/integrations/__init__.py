"""Sparsity training (paper Eq. 1) inside other people's trainers, each through :func:`netslim.sparsify`.

``netslim.integrations.lightning``: a Lightning callback (needs ``lightning`` or ``pytorch_lightning``).
"""
