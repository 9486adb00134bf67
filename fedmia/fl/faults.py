"""Injected client faults, for testing that a federation survives them.

Whether client ``pid`` fails in round ``r`` is a function of (seed, pid, r) only, so a run is
repeatable and a test can predict exactly which replies go missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fedmia.seeding import rng


class InjectedCrash(RuntimeError):
    """A client crash that the config asked for."""


@dataclass(frozen=True)
class Faults:
    crash_probability: float = 0.0
    hang_probability: float = 0.0
    hang_seconds: float = 0.0
    seed: int = 0

    def fault(self, pid: int, server_round: int) -> str | None:
        """'crash', 'hang' or None for this client in this round."""
        u = float(rng(self.seed, "fault", pid, server_round).random())
        if u < self.crash_probability:
            return "crash"
        if u < self.crash_probability + self.hang_probability:
            return "hang"
        return None

    def strike(self, pid: int, server_round: int) -> None:
        """Crash (raise) or hang (sleep past the round timeout) if this client is to fail now."""
        kind = self.fault(pid, server_round)
        if kind == "crash":
            raise InjectedCrash(f"client {pid} crashed in round {server_round} (injected)")
        if kind == "hang":
            time.sleep(self.hang_seconds)
