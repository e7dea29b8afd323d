"""Errors the planner raises when a spec cannot be served."""

from __future__ import annotations


class InfeasiblePlan(Exception):
    """The spec asks for more than the hardware can give.

    `limit` names what binds (memory, ttft_slo, tpot_slo, max_model_len, pool), `detail` gives the
    numbers, `change` the nearest change that would make the spec feasible.
    """

    def __init__(self, limit: str, detail: str, change: str):
        self.limit = limit
        self.detail = detail
        self.change = change
        super().__init__(f"infeasible ({limit}): {detail}\nnearest feasible change: {change}")
