"""Background model work at the lowest priority: small slices on the model thread, between requests.

The canary and the shadow comparison need the model (and its fp32 reference), but must never
delay a request. A second thread running the reference beside the serving thread would compete
for the same cores and the GIL on every request (this model's decoding loop is mostly Python),
so both run on the model's own thread instead, one small slice at a time (a model call on at most
eight examples, or one replayed request), and only when the engine has been idle for ``quiet_s``:
nothing queued, nothing arriving, no batch running. A request that arrives during a slice waits
for that slice only, never for a whole canary run.

A server that is never idle would starve the canary forever; a caller may ask for an ``urgent``
slice (the canary does once its run is a full interval overdue), which is queued on the model
thread at once, behind the batch that runs now: one slice per batch at most, while overdue.

Example::

    slices = BackgroundSlices(engine)
    captions = await slices.run(lambda: model.generate_captions(images))   # waits for a quiet moment
    await slices.run(work, urgent=True)                                     # next in line
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from mobile_multimodal.serving.engine import InferenceEngine

T = TypeVar("T")


class BackgroundSlices:
    """Runs functions on ``engine``'s model thread when it has been idle for ``quiet_s``."""

    def __init__(self, engine: InferenceEngine, quiet_s: float = 0.01, poll_s: float = 0.005) -> None:
        if quiet_s < 0 or poll_s <= 0:
            raise ValueError(f"quiet_s must be >= 0 and poll_s > 0, got {quiet_s}, {poll_s}")
        self.engine = engine
        self.quiet_s = quiet_s
        self.poll_s = poll_s
        self.slices_run = 0
        self.urgent_slices = 0

    async def wait_idle(self) -> None:
        """Return once no request has needed the model for ``quiet_s`` (polls every ``poll_s``)."""
        while True:
            idle = self.engine.idle_for()
            if idle > 0 and idle >= self.quiet_s:
                return
            await asyncio.sleep(max(self.poll_s, self.quiet_s - idle))

    async def run(self, fn: Callable[[], T], *, urgent: bool = False) -> T:
        """Run ``fn`` on the model thread at the next quiet moment (at once if ``urgent``)."""
        if urgent:
            self.urgent_slices += 1
        else:
            await self.wait_idle()
        result = await self.engine.run_in_model_thread(fn)
        self.slices_run += 1
        return result
