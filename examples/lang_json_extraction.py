"""JSON extraction with radixrt.lang: ``gen(json_schema=...)`` constrains the tokens the engine
samples to a JSON object of the schema, so the model's answer always parses. The schema is small
(a name of at most 20 characters and an integer age) so the object ends well within max_tokens;
``run_batch`` extracts three texts at once, sharing the instruction's prefix in the cache.

Run: .venv/bin/python examples/lang_json_extraction.py [tcp://HOST:PORT]
"""

import json
import sys

import radixrt.lang as sgl

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TEXTS = [
    "Maria Lopez is a 34 year old engineer who lives in Madrid.",
    "Yesterday I met Kenji, who just turned 27, at the conference.",
    "Our neighbour, Mr. Brown, celebrated his 80th birthday last week.",
]


@sgl.function
def extract(s, text):
    s += sgl.system("You extract facts from text and answer with JSON only.")
    s += sgl.user("Give the person's name and age as JSON with the keys name and age.\nText: " + text)
    s += sgl.assistant(sgl.gen("info", json_schema=SCHEMA, max_tokens=64))


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        states = extract.run_batch([{"text": t} for t in TEXTS], temperature=0)
        for text, state in zip(TEXTS, states):
            print(f"text: {text}")
            if state.error() is not None:
                sys.exit(f"the program failed: {state.error()}")
            raw = state["info"]
            try:
                info = json.loads(raw)
            except json.JSONDecodeError:  # only if max_tokens cut the object short
                info = None
            if not isinstance(info, dict):
                print(f"  not a complete JSON object: {raw!r}")
                continue
            print(f"  raw:    {raw.strip()}\n  parsed: name={info.get('name')!r}, age={info.get('age')!r}")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
