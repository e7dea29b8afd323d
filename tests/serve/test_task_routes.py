"""PaliGemma task routes through the real stack."""

import httpx
import pytest
from serve_helpers import AUTH, data_url, png_bytes

from serve import tasks

pytestmark = pytest.mark.engine


def post(url, route, **body):
    reply = httpx.post(f"{url}/v1/vision/{route}", json={"max_tokens": 24, **body}, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.parametrize(
    "route,extra,prompt",
    [
        ("caption", {"language": "de"}, "caption de"),
        ("ocr", {}, "ocr"),
        ("answer", {"question": "what is  this?"}, "answer en what is this?"),
    ],
)
def test_text_tasks_build_the_prefix_and_return_text(url, route, extra, prompt):
    result = post(url, route, image=data_url(png_bytes()), **extra)
    assert result["prompt"] == prompt
    assert result["model"] == "tiny-paligemma"
    assert isinstance(result["text"], str) and result["usage"]["completion_tokens"] <= 24


def test_detect_returns_boxes_parsed_from_loc_tokens_in_original_pixels(url):
    width, height = 300, 120
    result = post(url, "detect", image=data_url(png_bytes((width, height))), objects=["cat", "dog"], max_tokens=200)
    assert result["prompt"] == "detect cat ; dog"
    expected = [o.model_dump(mode="json") for o in tasks.parse_detections(result["text"], width, height)]
    assert result["objects"] == [{**o, "box": list(o["box"])} for o in expected]
    # the random tiny model emits <loc> tokens, so there is something to parse
    assert result["objects"], result["text"]
    for obj in result["objects"]:
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


def test_task_route_accepts_a_data_url_or_bare_base64(url):
    import base64

    raw = png_bytes()
    a = post(url, "caption", image=data_url(raw))
    b = post(url, "caption", image=base64.b64encode(raw).decode())
    assert a["text"] == b["text"]
