"""The program's pieces: what ``s += ...`` appends (text, ``gen``, ``select``, role and variable-scope
markers, lists of these) and the sampling options of a ``gen`` and of a run.

Sampling options follow SGLang: a ``gen`` leaves unset (None) what the ``run`` call decides, and a
``gen`` that sets ``stop`` replaces the run's stop strings rather than adding to them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from radixrt.lang.choices import ChoicesSamplingMethod
from radixrt.params import SamplingParams

REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""
_DTYPES = {
    "int": (REGEX_INT, (" ", "\n")),
    "float": (REGEX_FLOAT, (" ", "\n")),
    "bool": (REGEX_BOOL, ()),
    "str": (REGEX_STR, ()),
}


@dataclass
class SglSamplingParams:
    """A ``gen``'s options (None: as the run says) or a run's (every field set)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | tuple[str, ...] | None = None
    stop_token_ids: list[int] | tuple[int, ...] | None = None
    stop_regex: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    json_schema: str | dict | None = None
    dtype: type | str | None = None
    regex: str | None = None

    def over(self, defaults: SglSamplingParams) -> SglSamplingParams:
        """These options, with the run's ``defaults`` where they are unset."""
        return SglSamplingParams(
            **{
                f.name: v if (v := getattr(self, f.name)) is not None else getattr(defaults, f.name)
                for f in fields(self)
            }
        )

    def engine_params(self) -> SamplingParams:
        """The engine's ``SamplingParams`` (``dtype`` becomes its regex); raises ``ValueError`` for
        what radixrt does not do."""
        if self.n not in (None, 1):
            raise ValueError("gen(n=...) > 1 is not supported: fork the state (s.fork(n)) for n samples")
        if self.stop_regex:
            raise ValueError("stop_regex is not supported: constrain the output with regex= instead")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        regex = self.regex
        if self.dtype is not None:
            name = self.dtype if isinstance(self.dtype, str) else getattr(self.dtype, "__name__", None)
            if name not in _DTYPES:
                raise ValueError(f"dtype must be one of int, float, bool, str (or their names), got {self.dtype!r}")
            regex, extra_stop = _DTYPES[name]
            stop += tuple(s for s in extra_stop if s not in stop)
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or 0,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(0, self.top_k),
            min_p=self.min_p,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            ignore_eos=bool(self.ignore_eos),
            logprobs=bool(self.return_logprob),
            top_logprobs=(self.top_logprobs_num or 0) if self.return_logprob else 0,
            regex=regex,
            json_schema=self.json_schema,
        )


RUN_DEFAULTS = SglSamplingParams(
    max_new_tokens=128,
    min_new_tokens=0,
    n=1,
    stop=(),
    stop_token_ids=(),
    stop_regex=(),
    temperature=1.0,
    top_p=1.0,
    top_k=-1,
    min_p=0.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    ignore_eos=False,
    return_logprob=False,
)


def run_options(values: dict[str, Any]) -> SglSamplingParams:
    """A run's sampling options from the keyword arguments of ``run``/``run_batch``."""
    given = {f.name: values[f.name] for f in fields(SglSamplingParams) if f.name in values}
    return SglSamplingParams(**given).over(RUN_DEFAULTS)


# ---- expressions -------------------------------------------------------------------------------


class SglExpr:
    """What ``s += ...`` takes; ``"text" + gen(...)`` and ``gen(...) + "text"`` make a list."""

    def __add__(self, other: SglExpr | str) -> SglExprList:
        return SglExprList([self, _expr(other)])

    def __radd__(self, other: SglExpr | str) -> SglExprList:
        return SglExprList([_expr(other), self])


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[SglExpr]) -> None:
        self.expr_list = [e for x in expr_list for e in (x.expr_list if isinstance(x, SglExprList) else [x])]

    def __repr__(self) -> str:
        return f"ExprList({self.expr_list})"


class SglConstantText(SglExpr):
    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SglGen(SglExpr):
    def __init__(self, name: str | None, sampling_params: SglSamplingParams) -> None:
        self.name, self.sampling_params = name, sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class SglSelect(SglExpr):
    def __init__(
        self, name: str | None, choices: list[str], temperature: float, choices_method: ChoicesSamplingMethod
    ) -> None:
        self.name, self.choices, self.temperature = name, list(choices), temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices})"


class SglRoleBegin(SglExpr):
    def __init__(self, role: str) -> None:
        self.role = role


class SglRoleEnd(SglExpr):
    def __init__(self, role: str) -> None:
        self.role = role


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str) -> None:
        self.name = name


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str) -> None:
        self.name = name


class SglImage(SglExpr):
    def __init__(self, path: Any) -> None:
        self.path = path


class SglVideo(SglExpr):
    def __init__(self, path: Any, num_frames: int) -> None:
        self.path, self.num_frames = path, num_frames


class SglConcateAndAppend(SglExpr):
    """``join("concate_and_append")``: the branches (their executors) whose text the state appends."""

    def __init__(self, branches: list) -> None:
        self.branches = branches


def _expr(x: SglExpr | str) -> SglExpr:
    if isinstance(x, SglExpr):
        return x
    if isinstance(x, str):
        return SglConstantText(x)
    raise TypeError(f"a program appends text (str) or gen/select/role expressions, not {type(x).__name__}")
