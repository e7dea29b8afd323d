"""Settings of the HTTP gateway; defined with the rest of the plan vocabulary."""

from paliserve.spec import GatewaySettings

__all__ = ["GatewaySettings"]
