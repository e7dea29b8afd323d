"""Locust load tests that check a serving plan against a live endpoint.

This package is imported inside the Locust process (gevent): modules the locustfile uses
(`latency`, `sse`, `shapes`, `traffic`, `images`, `records`) import only the standard library
and Pillow. Everything else runs in the parent process.
"""
