"""paliserve: a multi-tenant serving cluster for PaliGemma on Ray Serve and vLLM."""

__version__ = "0.1.0"
