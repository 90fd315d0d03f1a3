"""Test-wide setup. Without a GPU, Triton kernels run in the interpreter on CPU tensors; that must
be chosen before any kernel module is imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
