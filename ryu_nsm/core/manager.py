"""The interface of the controller's feature managers (after Faucet's ``ValveManagerBase``).

The core (``controller.Controller``) owns the plan and calls every manager's hooks in turn when the
fabric or the plan changes; each manager keeps its own books and answers with commands or data.
A new capability is a new manager, not more attributes on the core.
"""

from __future__ import annotations

from ryu_nsm.core.planner import FabricState, Plan


class Manager:
    """Hooks the core calls on every manager; each does nothing unless a manager needs it."""

    def fabric_changed(self) -> None:
        """A switch or a port changed: what was derived from them is stale."""

    def plan_changed(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        """The plan went from ``before`` to ``after`` (``after.touched`` say which connections) under
        ``state``."""
