"""Serve's replica log kept across vLLM's logging set-up.

Creating a vLLM engine configures logging with `logging.config.dictConfig` (AsyncLLM:
vllm.logger.configure_logging_if_needed; VLLM_CONFIGURE_LOGGING=0 would stop it, but the engine's
root-cause report reads vLLM's formatted lines). A non-incremental `dictConfig` first closes every
handler in the process, and a closed `MemoryHandler` drops its target: the `MemoryHandler`
Serve's replica logs through (`ray.serve`, buffered in front of the replica's log file) then
writes nothing more and never empties its buffer, so the replica's log ends at the engine's
creation, its records pile up in memory, and Serve's `is_allocated()` fails on the log's path
(`'NoneType' object has no attribute 'baseFilename'`). That call is how a restarted Serve
controller recovers a live replica (head lost with GCS fault tolerance): failing it, the
controller stopped every running vLLM replica and started new ones, an outage as long as a
replica's start-up (README, reliability table: head lost with GCS fault tolerance).

`serve_log_kept()` around the engine's creation gives Serve's handlers their targets back (the file
handler reopens its file on the next record)."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Iterator
from contextlib import contextmanager

SERVE_LOGGER = "ray.serve"  # ray.serve._private.constants.SERVE_LOGGER_NAME


@contextmanager
def serve_log_kept(name: str = SERVE_LOGGER) -> Iterator[None]:
    """Restore the targets of the `name` logger's MemoryHandlers that were closed inside the block."""
    kept = [(h, h.target) for h in logging.getLogger(name).handlers
            if isinstance(h, logging.handlers.MemoryHandler) and h.target is not None]
    try:
        yield
    finally:
        for handler, target in kept:
            if handler.target is None:
                handler.target = target
