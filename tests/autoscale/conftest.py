def pytest_configure(config):
    config.addinivalue_line("markers", "engine: starts a real vLLM engine (slow)")
