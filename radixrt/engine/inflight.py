"""The steps queued on the device and not yet collected, oldest first.

Without overlap a step is collected as soon as it is queued. With it, step k+1 is queued before
step k is collected, so the host files step k's outputs while the device runs step k+1. Each
request's tokens sampled by a step still in flight are ``Request.pending``: they count (the next
step feeds them, straight from the device) before their values are known.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from radixrt.engine.model_runner import Launched, ModelRunner
from radixrt.engine.request import Request
from radixrt.engine.scheduler import Scheduler


@dataclass
class Step:
    """A queued step, and what each request of its batch was when it was queued: the tokens it
    had computed then, and its retraction count (a request retracted since gets its sampled token
    but computes the prompt's scores again)."""

    batch: list[tuple[Request, int]]
    launched: Launched
    marks: list[tuple[int, int]]


class InFlight:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler) -> None:
        self.runner, self.scheduler = runner, scheduler
        self.steps: deque[Step] = deque()

    def __len__(self) -> int:
        return len(self.steps)

    def launch(self, batch: list[tuple[Request, int]]) -> None:
        """Queue ``batch`` (raises if the forward cannot be queued: nothing has changed then)."""
        previous = self.steps[-1].launched if self.steps else None
        launched = self.runner.launch(batch, self.scheduler.sink_refresh, previous)
        for req, n in batch:
            self.scheduler.progress(req, n)
        for req in launched.sampled:
            req.add_pending()
        self.steps.append(Step(batch, launched, [(r.computed, r.retractions) for r, _ in batch]))

    def must_collect(self) -> bool:
        """Whether a running request's next sampling reads tokens still on the device (a
        constraint's state, penalties): the next step waits for them then."""
        return bool(self.steps) and any(r.pending and r.needs_known_tokens for r in self.scheduler.running)

    def oldest(self) -> Step:
        return self.steps.popleft()
