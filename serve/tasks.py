"""PaliGemma task prompts and the parsing of their outputs."""

from __future__ import annotations

import re

from serve.schemas import DetectedObject

LOC_GRID = 1024  # <locNNNN> values lie on a 0..1023 grid over the image

_BOX = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^<;]*)")


def caption_prompt(language: str) -> str:
    return f"caption {language}"


def ocr_prompt() -> str:
    return "ocr"


def answer_prompt(language: str, question: str) -> str:
    return f"answer {language} {' '.join(question.split())}"


def detect_prompt(objects: list[str]) -> str:
    return "detect " + " ; ".join(" ".join(o.split()) for o in objects)


def parse_detections(text: str, width: int, height: int) -> list[DetectedObject]:
    """Decode `<locY0><locX0><locY1><locX1> label ; ...` into boxes in image pixels.

    Each box's four tokens are ymin, xmin, ymax, xmax on a 1024 grid; boxes whose label is empty
    keep an empty label, and malformed fragments (fewer than four loc tokens) are skipped.
    """
    objects = []
    for match in _BOX.finditer(text):
        y0, x0, y1, x1 = (int(v) for v in match.groups()[:4])
        y0, y1 = sorted((y0, y1))
        x0, x1 = sorted((x0, x1))
        box = (
            round(x0 / LOC_GRID * width, 1),
            round(y0 / LOC_GRID * height, 1),
            round(x1 / LOC_GRID * width, 1),
            round(y1 / LOC_GRID * height, 1),
        )
        objects.append(DetectedObject(label=match.group(5).strip(), box=box))
    return objects
