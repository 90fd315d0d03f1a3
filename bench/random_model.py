#!/usr/bin/env python3
"""A model with another's config and tokenizer and random weights, for speed runs where the real
weights cannot be had (a machine without the default model's package): throughput does not depend
on the weights' values, and the benchmarks fix their output lengths.

    python bench/random_model.py OUT [--like DIR]

``DIR`` needs only config.json and the tokenizer files (default: the default model's directory), so
a few MB carried to another machine are enough to rebuild the default model's shape there.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from radixrt.model.loader import hf_directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="directory to write (config, tokenizer, model.safetensors)")
    ap.add_argument("--like", help="directory with config.json and tokenizer files (default: the default model's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    like = args.like or hf_directory()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like), dtype=torch.float32)
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(like).save_pretrained(args.out)
    print(
        f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M random parameters "
        f"shaped like {like}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
