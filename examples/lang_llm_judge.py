"""LLM-as-a-judge with radixrt.lang: a fork drafts three candidate answers to one question (each
branch starts its answer differently, so greedy decoding still gives three different drafts), then
the conversation goes on with a judge prompt that lists the drafts, and ``select`` picks the best
of "1", "2", "3". The branches and the judge all begin with the same conversation, which the
prefix cache holds.

Run: .venv/bin/python examples/lang_llm_judge.py [tcp://HOST:PORT]
"""

import sys

import radixrt.lang as sgl

QUESTION = "Why is the sky blue?"
OPENINGS = ["In short,", "Scientifically speaking,", "Think of it like this:"]


@sgl.function
def judged_answer(s, question):
    s += sgl.system("You are a helpful assistant. Answer in one or two sentences.")
    s += sgl.user(question)
    drafts = s.fork(len(OPENINGS))
    drafts += lambda i: sgl.assistant(OPENINGS[i] + sgl.gen("draft", max_tokens=40, stop="\n"))
    drafts.join()  # s["draft"]: the three drafts' generated text
    candidates = [f"{opening}{draft}".strip() for opening, draft in zip(OPENINGS, s["draft"])]
    s["candidates"] = candidates
    listing = "\n".join(f"{i}. {c}" for i, c in enumerate(candidates, 1))
    s += sgl.assistant("Here are three possible answers:\n" + listing)
    s += sgl.user("Which answer is the most accurate and clear? Reply with its number only.")
    s += sgl.assistant(sgl.select("best", choices=["1", "2", "3"]))


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        state = judged_answer.run(question=QUESTION, temperature=0)
        if state.error() is not None:
            sys.exit(f"the program failed: {state.error()}")
        print(f"Q: {QUESTION}\n")
        for i, candidate in enumerate(state["candidates"], 1):
            print(f"candidate {i}: {candidate}")
        best = state["best"]
        scores = (state.get_meta_info("best") or {}).get("normalized_prompt_logprobs", [])
        print(f"\nthe judge picks candidate {best} (mean logprob per choice: {[round(x, 2) for x in scores]})")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
