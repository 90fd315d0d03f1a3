"""A three-turn chat with radixrt.lang roles (``sgl.system``/``sgl.user``/``sgl.assistant``, and
the ``with s.user():`` form). Each turn's request begins with the whole conversation so far, and
the state sends the very tokens the model read and wrote before, so the prefix cache serves all of
it (the engine caches whole pages, so the last partial page is computed again). After each turn
it prints how many of that request's prompt tokens came from the cache.

Run: .venv/bin/python examples/lang_multi_turn_chat.py [tcp://HOST:PORT]
"""

import sys

import radixrt.lang as sgl

SYSTEM = "You are a helpful assistant. Keep answers short."
QUESTIONS = ["Name a planet in our solar system.", "How far is it from the Sun?", "Could people live there?"]


@sgl.function
def chat(s, questions):
    s += sgl.system(SYSTEM)
    for k, question in enumerate(questions, 1):
        if k == 2:
            with s.user():  # the same as s += sgl.user(question)
                s += question
        else:
            s += sgl.user(question)
        s += sgl.assistant(sgl.gen(f"answer_{k}", max_tokens=40))


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        state = chat.run(questions=QUESTIONS, temperature=0)
        for k, question in enumerate(QUESTIONS, 1):
            answer = state[f"answer_{k}"]  # waits for turn k
            meta = state.get_meta_info(f"answer_{k}") or {}
            prompt, cached = meta.get("prompt_tokens", 0), meta.get("cached_tokens", 0)
            print(f"turn {k}\n  user:      {question}\n  assistant: {answer.strip()}")
            print(f"  prompt tokens: {prompt}, from the cache: {cached} ({cached / max(prompt, 1):.0%})\n")
        if state.error() is not None:
            sys.exit(f"the program failed: {state.error()}")
        print(f"{len(state.messages())} messages: {[m['role'] for m in state.messages()]}")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
