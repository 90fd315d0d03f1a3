"""Tree of thought with radixrt.lang: one question, three first thoughts (one fork per
approach), and under each thought two more branches (a nested fork) that continue and check it.
Then the model picks the most promising approach with ``select``. Every branch reads the question
and its parent thought from the prefix cache: only what a branch adds is computed.

Run: .venv/bin/python examples/lang_tree_of_thought.py [tcp://HOST:PORT]
"""

import sys

import radixrt.lang as sgl

QUESTION = "Pens cost 3 dollars each. Tom buys 4 pens and pays with a 20 dollar bill. How much change does he get?"
APPROACHES = [
    "Work out the total cost first.",
    "Start from the 20 dollars and take away the pens one by one.",
    "Write it as one calculation.",
]
SUB_BRANCHES = ["\nNext step:", "\nDouble-check:"]


@sgl.function
def tree_of_thought(s, question):
    s += "Question: " + question + "\n"
    thoughts = s.fork(len(APPROACHES))
    thoughts += lambda i: f"Approach {i + 1}: {APPROACHES[i]}\nThought:" + sgl.gen("thought", max_tokens=32, stop="\n")
    nested = []
    for thought in thoughts:  # the nested forks: each thought branches again
        steps = thought.fork(len(SUB_BRANCHES))  # waits for this thought's text, not for the others
        steps += lambda j: SUB_BRANCHES[j] + sgl.gen("step", max_tokens=24, stop="\n")
        steps += "\nIs this reasoning correct? Answer yes or no: " + sgl.select("ok", choices=["yes", "no"])
        nested.append(steps)
    for steps in nested:  # joined only once all six branches are under way, so that they run together
        steps.join()  # the thought gets lists: thought["step"], thought["ok"]
    thoughts.join()  # s["thought"], and s["step"] / s["ok"] as lists of lists
    listing = "".join(f"Approach {i + 1}: {t.strip()}\n" for i, t in enumerate(s["thought"]))
    s += "\nThe three approaches were:\n" + listing
    s += "The most promising approach is number " + sgl.select("best", choices=["1", "2", "3"])


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        state = tree_of_thought.run(question=QUESTION, temperature=0)
        if state.error() is not None:
            sys.exit(f"the program failed: {state.error()}")
        print(f"Question: {QUESTION}\n")
        for i, (thought, steps, oks) in enumerate(zip(state["thought"], state["step"], state["ok"])):
            print(f"Approach {i + 1} ({APPROACHES[i]})\n  thought: {thought.strip()!r}")
            for label, step, ok in zip(SUB_BRANCHES, steps, oks):
                print(f"    {label.strip():<14} {step.strip()!r}  -> correct? {ok}")
            print(f"  votes for 'correct': {sum(ok == 'yes' for ok in oks)} of {len(oks)}\n")
        print(f"The model picks approach {state['best']}.")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
