"""serve/replica_logging.py: Serve's replica log handler survives vLLM's logging set-up (a
`dictConfig` that closes every handler), with a config like vLLM's and, in a fresh interpreter,
with vLLM's own (`vllm.logger.configure_logging`, which creating its engine calls)."""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import subprocess
import sys
from copy import deepcopy

from serve.replica_logging import serve_log_kept

VLLM_LIKE = {"version": 1, "disable_existing_loggers": False,
             "handlers": {"vllm": {"class": "logging.StreamHandler", "level": "INFO"}},
             "loggers": {"vllm-like": {"handlers": ["vllm"], "level": "INFO", "propagate": False}}}


def serve_like_logger(name, path):
    """As Serve configures a replica's logger: a MemoryHandler in front of a rotating file."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    target = logging.handlers.RotatingFileHandler(path, maxBytes=2**20, backupCount=1)
    logger.addHandler(logging.handlers.MemoryHandler(capacity=2, target=target, flushLevel=logging.ERROR))
    return logger


def test_a_dictconfig_closes_the_handler_and_the_block_gives_its_target_back(tmp_path):
    lost = serve_like_logger("test.serve.lost", tmp_path / "lost.log")
    logging.config.dictConfig(deepcopy(VLLM_LIKE))
    for i in range(5):
        lost.info("record %d", i)
    assert lost.handlers[0].target is None and len(lost.handlers[0].buffer) == 5  # never written, piling up
    assert not (tmp_path / "lost.log").read_text()

    kept = serve_like_logger("test.serve.kept", tmp_path / "kept.log")
    with serve_log_kept("test.serve.kept"):
        logging.config.dictConfig(deepcopy(VLLM_LIKE))
    for i in range(5):
        kept.info("record %d", i)
    assert kept.handlers[0].target is not None and len(kept.handlers[0].buffer) < 2
    assert (tmp_path / "kept.log").read_text().count("record") == 4  # the fifth waits in the buffer


def test_vllm_configuring_logging_inside_the_block_keeps_the_log(tmp_path):
    script = f"""
import logging, logging.handlers
from serve.replica_logging import serve_log_kept
logger = logging.getLogger("ray.serve")
target = logging.handlers.RotatingFileHandler({str(tmp_path / "serve.log")!r})
logger.addHandler(logging.handlers.MemoryHandler(capacity=1, target=target))
logger.setLevel(logging.INFO)
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging
with serve_log_kept():
    configure_logging(LoggingConfig())
assert logging.getLogger("vllm").handlers, "vLLM configured its logging"
logger.info("after vLLM's import")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "after vLLM's import" in (tmp_path / "serve.log").read_text()
