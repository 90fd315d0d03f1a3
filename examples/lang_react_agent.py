"""A ReAct agent with radixrt.lang: Thought / Action / Observation, at most three steps. The
model picks its action with ``select`` (calculate or finish) and writes the calculator's input
under a regex that admits arithmetic only; a local tool evaluates it safely (an ``ast`` walk over
numbers and + - * /, never ``eval``), and the observation goes back into the prompt. Each step's
request begins with everything before it, which the prefix cache already holds.

Run: .venv/bin/python examples/lang_react_agent.py [tcp://HOST:PORT]
"""

import ast
import operator
import sys

import radixrt.lang as sgl

MAX_STEPS = 3
ARITHMETIC = r"[0-9+\-*/(). ]+"
PROMPT = """Answer the question. You may use a calculator.
Actions: calculate[expression] evaluates arithmetic; finish[answer] gives the final answer.

Question: A box holds 12 eggs. How many eggs are in 7 boxes and 5 loose eggs?
Thought 1: I need to calculate 12 times 7, plus 5.
Action 1: calculate[12 * 7 + 5]
Observation 1: 89
Thought 2: The calculator says 89, so there are 89 eggs.
Action 2: finish[89]

Question: Sam has 40 stickers and gives 13 to Ben. How many stickers does Sam keep?
Thought 1: I need to calculate 40 minus 13.
Action 1: calculate[40 - 13]
Observation 1: 27
Thought 2: The calculator says 27, so Sam keeps 27 stickers.
Action 2: finish[27]

"""
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculate(expression: str) -> str:
    """The tool: + - * / and parentheses over numbers; anything else is an error message."""
    expression = expression.strip()
    if not expression or len(expression) > 64:
        return "error: give a short arithmetic expression"

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = value(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as e:
        return f"error: {type(e).__name__}"
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(round(result, 6) if isinstance(result, float) else result)


@sgl.function
def react_agent(s, question):
    s += PROMPT + "Question: " + question + "\n"
    for step in range(1, MAX_STEPS + 1):
        # The thought stops at "=": it says what to compute, and the tool computes it.
        s += f"Thought {step}:" + sgl.gen(f"thought_{step}", max_tokens=32, stop=["\n", "="]) + "\n"
        s += f"Action {step}: " + sgl.select(f"action_{step}", choices=["calculate", "finish"])
        if s[f"action_{step}"] == "finish":  # reading a variable waits for it: the loop follows the model
            s += "[" + sgl.gen("answer", max_tokens=16, stop=["]", "\n"]) + "]\n"
            return
        # The regex ends with the closing bracket: a stop string the regex forbids could never match.
        s += "[" + sgl.gen(f"input_{step}", max_tokens=24, regex=ARITHMETIC + r"\]") + "\n"
        s[f"observation_{step}"] = observation = calculate(s[f"input_{step}"].removesuffix("]"))
        s += f"Observation {step}: {observation}\n"
    s += f"Thought {MAX_STEPS + 1}: I have to answer now.\nAction {MAX_STEPS + 1}: finish["
    s += sgl.gen("answer", max_tokens=16, stop=["]", "\n"]) + "]\n"


def main():
    backend = sgl.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else sgl.Runtime()
    sgl.set_default_backend(backend)
    try:
        question = "A ticket costs 15 dollars. How much do 6 tickets cost?"
        state = react_agent.run(question=question, temperature=0)
        if state.error() is not None:
            sys.exit(f"the program failed: {state.error()}")
        print(state.text()[len(PROMPT) :])
        for step in range(1, MAX_STEPS + 1):
            if f"input_{step}" in state:
                expression = state[f"input_{step}"].removesuffix("]")
                print(f"step {step}: calculate[{expression}] -> {state[f'observation_{step}']}")
        print(f"final answer: {state['answer'].strip()!r} (expected: {calculate('15 * 6')})")
        print(f"cache hit rate: {sgl.get_server_info()['hit_rate']:.1%}")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
