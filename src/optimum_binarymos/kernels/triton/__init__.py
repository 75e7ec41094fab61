"""Triton kernels. Importing a module of this package imports ``triton``; :mod:`..dispatch` decides when.

:mod:`.linear` is the entry point of the packed BinaryMoS linear and picks one of two strategies by the number
of tokens: :mod:`.gemv` (split-K, few tokens) or :mod:`.gemm` (``tl.dot`` tiles). :mod:`.tiles` reads packed
signs and mixes the experts' scales inside the kernels; :mod:`.configs` holds the autotuning choices.
"""
