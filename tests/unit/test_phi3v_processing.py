"""The offline Phi-3.5-vision processor: token counts by hand from the published formula, pixel layout,
and loading as a model directory's remote code through transformers (what vLLM does)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.models.generated import TINY_PHI3V
from services.models.phi3v_processing import Phi3VImageProcessor, hd_size, num_image_tokens
from services.models.phi35_dummy import IMAGE_TOKEN_ID, build


# (width, height, num_crops) -> (hd width, hd height, tokens), worked by hand:
# tokens = (h*w + 1) * 144 + 1 + (h + 1) * 12 for an h x w grid of 336-px crops.
@pytest.mark.parametrize(
    "width,height,num_crops,hd,tokens",
    [
        (48, 48, 1, (336, 336), 2 * 144 + 1 + 2 * 12),  # 1x1 grid: 313
        (672, 672, 4, (672, 672), 5 * 144 + 1 + 3 * 12),  # 2x2: 757, the phi35 catalog's figure
        (1000, 200, 4, (1344, 336), 5 * 144 + 1 + 2 * 12),  # 1 row of 4 crops, height padded 268 -> 336
        (200, 1000, 4, (336, 1344), 5 * 144 + 1 + 5 * 12),  # the same image turned: 4 rows of 1
        (1344, 1344, 16, (1344, 1344), 17 * 144 + 1 + 5 * 12),  # 4x4 at 16 crops
        (50, 8000, 4, (336, 1344), 5 * 144 + 1 + 5 * 12),  # vLLM's most-features probe image
        (1, 1000, 1, (336, 336), 2 * 144 + 1 + 2 * 12),  # a sliver keeps one row (the hub's resize to 0 px fails)
        (4000, 1, 4, (1344, 336), 5 * 144 + 1 + 2 * 12),
    ],
)
def test_token_counts_follow_the_published_formula(width, height, num_crops, hd, tokens):
    assert hd_size(width, height, num_crops) == hd
    assert num_image_tokens(width, height, num_crops) == tokens


def test_pixels_hold_the_global_view_then_the_crops_then_zero_padding():
    processor = Phi3VImageProcessor(num_crops=4)
    wide = Image.new("RGB", (1000, 200), "red")
    out = processor.preprocess([wide, Image.new("RGB", (900, 300), "blue")])
    assert out["pixel_values"].shape == (2, 5, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[336, 1344], [336, 1008]]  # [height, width] after the transform
    assert out["num_img_tokens"] == [745, 4 * 144 + 1 + 2 * 12]
    red = (1.0 - 0.48145466) / 0.26862954  # CLIP-normalized red channel of a pure red pixel
    first_crop_centre = out["pixel_values"][0, 1, 0, 168, 168].item()
    assert first_crop_centre == pytest.approx(red, abs=1e-4)
    assert out["pixel_values"][1, 4].abs().sum() == 0  # three crops used of four: the last is padding
    assert out["pixel_values"][1, :4].abs().sum(dim=(1, 2, 3)).min() > 0  # the global view and the crops


def test_a_built_directory_loads_as_remote_code_and_expands_image_tags(tmp_path):
    from transformers import AutoProcessor

    build(tmp_path / "phi3v", "vision", config_overrides=TINY_PHI3V, num_crops=1)
    processor = AutoProcessor.from_pretrained(str(tmp_path / "phi3v"), trust_remote_code=True)
    assert type(processor).__name__ == "Phi3VProcessor"
    assert processor.tokenizer.convert_tokens_to_ids("<|image|>") == IMAGE_TOKEN_ID
    assert processor.img_tokens[:2] == ["<|image_1|>", "<|image_2|>"]
    images = [Image.new("RGB", (48, 48)), Image.new("RGB", (1000, 200))]
    out = processor(text="<|user|>\n<|image_1|>\n<|image_2|>\nWhat are these?<|end|>\n", images=images)
    image_ids = out["input_ids"][0] == IMAGE_TOKEN_ID
    assert image_ids.sum().item() == 313 + num_image_tokens(1000, 200, 1)
    text_only = processor(text="<|user|>\nhi<|end|>\n")
    assert (text_only["input_ids"] == IMAGE_TOKEN_ID).sum() == 0
    # vLLM 0.24 asks for a bare tag with no image (its prompt-update probe): the model's own processor
    # tokenizes the tag as text, it does not expand it (the first H200 run failed here on an IndexError).
    bare_tag = processor(text="<|image_1|>")["input_ids"][0].tolist()
    assert bare_tag == processor.tokenizer("<|image_1|>").input_ids and IMAGE_TOKEN_ID not in bare_tag
    assert processor.calc_num_image_tokens_from_image_size(48, 48) == 313
    with_more_crops = AutoProcessor.from_pretrained(str(tmp_path / "phi3v"), trust_remote_code=True, num_crops=4)
    assert with_more_crops.image_processor.num_crops == 4
    assert torch.equal(out["image_sizes"], torch.tensor([[336, 336], [336, 336]]))


def test_a_sliver_image_is_processed_not_refused():
    out = Phi3VImageProcessor(num_crops=4).preprocess([Image.new("RGB", (1, 1000)), Image.new("RGB", (4000, 1))])
    assert out["image_sizes"].tolist() == [[1344, 336], [336, 1344]]
    assert out["num_img_tokens"] == [5 * 144 + 1 + 5 * 12, 5 * 144 + 1 + 2 * 12]
