"""Few-shot classification with radixrt.lang: a handful of labelled reviews, then one new review,
and ``select`` picks the label the model finds most likely. ``run_batch`` runs the program for six
reviews at once; they all begin with the same few-shot prefix, which is computed once and then
served from the prefix cache (the hit rate printed at the end shows it).

Run: .venv/bin/python examples/lang_few_shot_select.py [tcp://HOST:PORT]
"""

import sys

import radixrt.lang as sgl

LABELS = ["positive", "negative", "neutral"]
FEW_SHOT = """Classify the sentiment of each review as positive, negative or neutral.

Review: The food was delicious and the staff were friendly.
Sentiment: positive

Review: My order arrived late and the box was broken.
Sentiment: negative

Review: The hotel is next to the train station.
Sentiment: neutral

Review: I loved every minute of this film, the actors were wonderful.
Sentiment: positive

Review: The battery died after two days and support never answered.
Sentiment: negative

Review: The package contains two cables and a manual.
Sentiment: neutral

"""
REVIEWS = [  # (review, the label a person would give)
    ("Absolutely fantastic service, I will come back again!", "positive"),
    ("The shoes fell apart after one week. Terrible quality.", "negative"),
    ("The museum opens at nine in the morning.", "neutral"),
    ("Great value for money and the delivery was fast.", "positive"),
    ("The room was dirty and the staff were rude.", "negative"),
    ("The book has three hundred pages.", "neutral"),
]


@sgl.function
def classify(s, review):
    # The label follows "Sentiment:" with its leading space, as in the examples: the choices are
    # scored as the tokens the examples use (" positive"), not as a space then a word.
    s += FEW_SHOT + "Review: " + review + "\nSentiment:"
    s += sgl.select("label", choices=[" " + label for label in LABELS])


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        states = classify.run_batch([{"review": review} for review, _ in REVIEWS], temperature=0)
        correct = 0
        print(f"{'model':>9} {'expected':>9}  review")
        for (review, expected), state in zip(REVIEWS, states):
            if state.error() is not None:
                sys.exit(f"the program failed: {state.error()}")
            label = state["label"].strip()
            correct += label == expected
            print(f"{label:>9} {expected:>9}  {review}")
        print(f"{correct} of {len(REVIEWS)} as expected (the default model is tiny: expect mistakes)")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
