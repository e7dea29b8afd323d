"""Real PNG images for request bodies, deterministic per seed."""

from __future__ import annotations

import base64
import io
import random


def png_data_url(size: int, seed: int) -> str:
    """A `data:image/png;base64,...` URL of a size x size RGB picture: two gradients and a
    noise channel, so it compresses like a photo rather than a flat colour."""
    from PIL import Image

    rng = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((size, size))
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    image = Image.merge("RGB", (gradient, gradient.rotate(90 * rng.randrange(1, 4)), noise))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
