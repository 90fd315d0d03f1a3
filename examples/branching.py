"""The main job (`make run`): a branching program in radixrt.lang on the default model. Three
questions share one system prompt; then one answer forks into three follow-ups. Every shared
prefix is computed once: the trunk of the fork is computed first and pinned in the cache until the
branches join, and the state carries token ids, so each request's prompt starts with exactly the
tokens the cache holds.

Run: make run    (or .venv/bin/python examples/branching.py [tcp://HOST:PORT] for a running server)
"""

import sys

import radixrt.lang as sgl

SYSTEM = (
    "You are a concise assistant for a travel agency. Answer in one or two sentences. You know the "
    "agency's tools: search_flights(origin, destination, date) finds flights; book_hotel(city, nights) "
    "reserves a room; weather(city) gives the forecast; currency(amount, from, to) converts money."
)
QUESTIONS = ["What is the capital of France?", "Which tool finds flights?", "How do I convert 100 euros to dollars?"]
FOLLOW_UPS = ["What should I see there?", "What is the weather like in spring?", "Is it expensive?"]


@sgl.function
def ask(s, question):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=48))


@sgl.function
def follow_ups(s, question, questions):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=48))
    forks = s.fork(len(questions))
    forks += lambda i: sgl.user(questions[i]) + sgl.assistant(sgl.gen("follow_up", max_tokens=48))
    forks.join()  # the parent's "follow_up" is the list of the branches' answers


def cached(state, name: str = "answer") -> str:
    meta = state.get_meta_info(name)
    return f"({meta['cached_tokens']} of {meta['prompt_tokens']} prompt tokens from the cache)"


if __name__ == "__main__":
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    for state in ask.run_batch([{"question": q} for q in QUESTIONS], temperature=0):
        print(f"Q: {state.messages()[1]['content']}\nA: {state['answer']}\n   {cached(state)}\n")

    state = follow_ups.run(question=QUESTIONS[0], questions=FOLLOW_UPS, temperature=0)
    print(f"trunk Q: {QUESTIONS[0]}\ntrunk A: {state['answer']}\n")
    for question, answer in zip(FOLLOW_UPS, state["follow_up"]):
        print(f"  fork Q: {question}\n  fork A: {answer}\n")

    info = sgl.get_server_info()
    print(f"cache hit rate: {info['hit_rate']:.1%}")
    backend.shutdown()
