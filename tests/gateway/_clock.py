"""A clock the lifecycle tests control (``TokenService``/``create_api_app`` take ``clock=``)."""

from __future__ import annotations

T0 = 1_800_000_000.0


class Clock:
    """Returns ``now``; with ``tick`` every call first advances it by that many seconds."""

    def __init__(self, now: float = T0, *, tick: float = 0.0) -> None:
        self.now = now
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now
