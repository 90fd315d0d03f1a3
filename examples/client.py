"""Talk to a running server: start one with `radixrt serve` (it prints its address when ready),
then run `python examples/client.py [ADDRESS]`."""

import asyncio
import sys

from radixrt import SamplingParams
from radixrt.client import AsyncClient, Client

address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"
system = {"role": "system", "content": "You are a terse assistant."}
greedy = SamplingParams(max_new_tokens=32, temperature=0)

with Client(address) as client:
    # many prompts at once: chats get the model's chat template on the server
    questions = ["What is the capital of France?", "What is 2 + 2?", "Name a color."]
    for out in client.generate([[system, {"role": "user", "content": q}] for q in questions], greedy):
        print(repr(out.text), out.finish_reason, f"{out.cached_tokens}/{out.prompt_tokens} prompt tokens cached")

    # streaming; a stop string ends the text before it
    chat = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    for piece in client.stream(chat, SamplingParams(max_new_tokens=40, temperature=0, stop=", 5")):
        print(piece, end="", flush=True)
    print()
    print("hit rate:", round(client.stats()["router"]["hit_rate"], 3))


async def main() -> None:
    async with AsyncClient(address) as client:  # any number of coroutines can share one client
        outs = await asyncio.gather(*(client.generate(f"Fact {i} about the moon:", greedy) for i in range(4)))
        print([o.text[:30] for o in outs])


asyncio.run(main())
