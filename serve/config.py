"""Settings of the HTTP gateway (limits on what a client may send)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Encoded image size cap.")
    max_image_pixels: int = Field(
        default=4096 * 4096, gt=0, description="width x height cap, checked before decoding."
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    allowed_image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    request_timeout_s: float = Field(default=300.0, gt=0)
