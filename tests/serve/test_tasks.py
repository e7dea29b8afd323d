import pytest

from serve import tasks


def test_prompts_follow_paligemma_task_prefixes():
    assert tasks.caption_prompt("en") == "caption en"
    assert tasks.ocr_prompt() == "ocr"
    assert tasks.answer_prompt("en", "  what   colour is\nit? ") == "answer en what colour is it?"
    assert tasks.detect_prompt(["cat", " red  car "]) == "detect cat ; red car"


def test_detection_boxes_are_scaled_from_the_1024_grid_to_pixels():
    # ymin, xmin, ymax, xmax on a 0..1023 grid, then the label
    text = "<loc0256><loc0000><loc0768><loc0512> cat ; <loc0000><loc0512><loc1023><loc1023> dog"
    objects = tasks.parse_detections(text, width=200, height=100)
    assert [o.label for o in objects] == ["cat", "dog"]
    assert objects[0].box == (0.0, 25.0, 100.0, 75.0)
    assert objects[1].box == (100.0, 0.0, 199.8, 99.9)


def test_detection_orders_inverted_corners_and_skips_fragments():
    text = "<loc0768><loc0512><loc0256><loc0000> box <loc0100><loc0200> partial"
    (only,) = tasks.parse_detections(text, width=1024, height=1024)
    assert only.label == "box"
    assert only.box == (0.0, 256.0, 512.0, 768.0)


@pytest.mark.parametrize("text", ["", "no boxes here", "<loc12><loc0001><loc0002><loc0003> x", "<seg001><seg002>"])
def test_detection_of_text_without_boxes_is_empty(text):
    assert tasks.parse_detections(text, 10, 10) == []


def test_detection_label_without_text_is_empty_string():
    (obj,) = tasks.parse_detections("<loc0001><loc0002><loc0003><loc0004>", 1024, 1024)
    assert obj.label == "" and obj.box == (2.0, 1.0, 4.0, 3.0)
