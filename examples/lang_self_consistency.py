"""Self-consistency with radixrt.lang: five forks each sample a short line of reasoning for the
same arithmetic question (temperature 0.7), then write a final answer under ``dtype=int`` (a regex
that admits an integer only); the majority answer wins (``collections.Counter``). The question and
its few-shot example are computed once and pinned while the forks read them from the prefix cache.

Run: .venv/bin/python examples/lang_self_consistency.py [tcp://HOST:PORT]
"""

import sys
from collections import Counter

import radixrt.lang as sgl

NUM_SAMPLES = 5
QUESTION = "Tom has 3 bags with 4 apples in each bag. How many apples does Tom have?"
EXAMPLE = """Q: A shelf has 2 rows of 5 books. How many books are on the shelf?
A: Each row has 5 books and there are 2 rows, so 2 times 5 is 10. The answer is 10.

"""


@sgl.function
def self_consistency(s, question, num_samples=NUM_SAMPLES):
    s += EXAMPLE + "Q: " + question + "\nA:"
    forks = s.fork(num_samples)
    forks += sgl.gen("reasoning", max_tokens=40, stop=["answer is", "\n"], temperature=0.7)
    for f in forks:  # a sample that got to "... the answer is" itself goes on from there
        finish = (f.get_meta_info("reasoning") or {}).get("finish_reason") or {}
        lead = "answer is " if finish.get("matched") == "answer is" else " The answer is "
        f += lead + sgl.gen("answer", max_tokens=4, dtype=int, temperature=0)  # digits, ended by a space
    forks.join()  # s["reasoning"] and s["answer"]: one entry per fork


def parse_int(text):
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def votes(answers):
    """How many samples gave each answer (answers that do not parse as a number are not counted)."""
    return Counter(a for a in map(parse_int, answers) if a is not None)


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        state = self_consistency.run(question=QUESTION, temperature=0)
        if state.error() is not None:
            sys.exit(f"the program failed: {state.error()}")
        print(f"Q: {QUESTION}\n")
        reasonings, answers = state["reasoning"], state["answer"]
        for i, (reasoning, answer) in enumerate(zip(reasonings, answers), 1):
            print(f"sample {i}: {reasoning.strip()!r} -> {answer!r}")
        tally = votes(answers)
        answer, count = tally.most_common(1)[0] if tally else (None, 0)
        print(f"\nvotes: {dict(tally)}")
        tie = " (a tie: the earliest sample's answer)" if list(tally.values()).count(count) > 1 else ""
        print(f"majority answer: {answer}{tie}: {count} of {len(answers)} samples (expected 12)")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
