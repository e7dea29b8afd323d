"""The running system: gateway, engine replica, request schemas, local cluster."""
