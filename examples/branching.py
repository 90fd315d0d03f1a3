"""A short branching program on the default model: one system prompt shared by several
questions, then a fork of three follow-ups from one answer. Every shared prefix is computed once;
the engine's counters show it.

Run: make run    (or .venv/bin/python examples/branching.py)
"""
from radixrt import Engine, SamplingParams

SYSTEM = (
    "You are a concise assistant for a travel agency. Answer in one or two sentences. You know the "
    "agency's tools: search_flights(origin, destination, date) finds flights; book_hotel(city, nights) "
    "reserves a room; weather(city) gives the forecast; currency(amount, from, to) converts money."
)
QUESTIONS = ["What is the capital of France?", "Which tool finds flights?", "How do I convert 100 euros to dollars?"]
FOLLOW_UPS = ["What should I see there?", "What is the weather like in spring?", "Is it expensive?"]

engine = Engine()
params = SamplingParams(max_new_tokens=48, temperature=0)


def chat(*turns: tuple[str, str]) -> list[int]:
    return engine.apply_chat_template([{"role": "system", "content": SYSTEM}] + [{"role": r, "content": c} for r, c in turns])


answers = engine.generate([chat(("user", q)) for q in QUESTIONS], params)
for q, a in zip(QUESTIONS, answers):
    print(f"Q: {q}\nA: {a.text}\n   ({a.cached_tokens} of {a.prompt_tokens} prompt tokens from the cache)\n")

trunk = (("user", QUESTIONS[0]), ("assistant", answers[0].text))
forks = engine.generate([chat(*trunk, ("user", f)) for f in FOLLOW_UPS], params)
for f, a in zip(FOLLOW_UPS, forks):
    print(f"  fork Q: {f}\n  fork A: {a.text}\n   ({a.cached_tokens} of {a.prompt_tokens} prompt tokens from the cache)\n")

s = engine.stats()
print(f"prompt tokens: {s['prompt_tokens']}, from the cache: {s['cached_tokens']}, computed: {s['computed_tokens']}, "
      f"hit rate: {s['hit_rate']:.1%}")
