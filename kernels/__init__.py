"""Triton paged-attention kernels, installed as ``radixrt.kernels``.

Kept outside ``radixrt/`` so it knows nothing of the rest of the runtime, and installed under
``radixrt.`` so it never shadows the unrelated PyPI package ``kernels`` that transformers probes for.
"""
