"""Every autoscaling decision as Ray metrics and a log line with its inputs and reason.

The policy runs inside the Serve controller, a Ray actor: `ray.util.metrics` there are
exported through the node's metrics agent like every other Ray metric (with the `ray_`
prefix), so Prometheus scrapes them beside the engines' own.
"""

from __future__ import annotations

import json
import logging
import time

from ray.util.metrics import Counter, Gauge

from autoscale.decision import Decision

logger = logging.getLogger("ray.serve")

SIGNALS = ("waiting", "running", "kv_cache_usage", "ttft_p95_s", "ttft_slo_s", "ongoing_requests")


class DecisionRecorder:
    """Metrics on every decision; a log line when the decision changes, else every `log_every_s`."""

    def __init__(self, deployment: str, log_every_s: float = 30.0):
        self.deployment = deployment
        self.log_every_s = log_every_s
        self._desired = Gauge(
            "paliserve_autoscaler_desired_replicas",
            description="Replicas the Prometheus policy asked for on its last decision.",
            tag_keys=("deployment",),
        )
        self._reason = Gauge(
            "paliserve_autoscaler_decision",
            description="1 for the reason of the last decision, 0 for the others.",
            tag_keys=("deployment", "reason"),
        )
        self._decisions = Counter(
            "paliserve_autoscaler_decisions",
            description="Decisions taken, by reason (the control loop decides about 10 times a second).",
            tag_keys=("deployment", "reason"),
        )
        self._signal = Gauge(
            "paliserve_autoscaler_signal",
            description="Inputs of the last decision (requests, KV-cache fraction, seconds).",
            tag_keys=("deployment", "signal"),
        )
        self._last: tuple[int, str] | None = None
        self._last_logged_at = 0.0
        self._reasons_seen: set[str] = set()

    def record(self, decision: Decision) -> None:
        tags = {"deployment": self.deployment}
        self._desired.set(decision.desired, tags=tags)
        self._reasons_seen.add(decision.reason)
        for reason in self._reasons_seen:
            self._reason.set(1.0 if reason == decision.reason else 0.0, tags={**tags, "reason": reason})
        self._decisions.inc(1.0, tags={**tags, "reason": decision.reason})
        for name in SIGNALS:
            value = decision.inputs.get(name)
            if isinstance(value, (int, float)):
                self._signal.set(float(value), tags={**tags, "signal": name})
        self._log(decision)

    def _log(self, decision: Decision) -> None:
        now = time.monotonic()
        key = (decision.desired, decision.reason)
        if key == self._last and now - self._last_logged_at < self.log_every_s:
            return
        self._last, self._last_logged_at = key, now
        level = logging.WARNING if decision.is_fallback else logging.INFO
        logger.log(
            level,
            "paliserve autoscaler: deployment=%s desired=%d reason=%s inputs=%s",
            self.deployment, decision.desired, decision.reason, json.dumps(decision.inputs, sort_keys=True),
        )  # fmt: skip
