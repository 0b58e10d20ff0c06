"""An offline Phi-3.5-vision processor, written from the model's published behaviour (its model card
and the hub's `processing_phi3_v.py` / `image_processing_phi3_v.py`), for dummy-weight and generated
model directories: nothing is downloaded.

This file is copied into such a directory as `processing_phi3_v.py` and loaded by transformers as the
model's remote code (`auto_map` in `preprocessor_config.json`), exactly where vLLM's `Phi3VForCausalLM`
expects the hub's processor. It therefore imports only numpy, PIL, torch and transformers, never
`services`. Production catalogs load the model's own code instead.

The HD transform: an image is turned so its long side is horizontal, scaled so that a grid of at most
`num_crops` 336-px crops covers it (width a multiple of 336), padded with white to a multiple of 336
in height, turned back, normalized with CLIP's mean and std, cut into its 336-px crops, and preceded
by a 336x336 global view; crops are zero-padded to `num_crops + 1`. An image of h_crop x w_crop
crops takes (h_crop * w_crop + 1) * 144 + 1 + (h_crop + 1) * 12 tokens: 144 per crop and for the
global view (12x12 after a 2x2 merge of CLIP's 24x24 patches), one separator, and a newline token
per row of the global view and of the crop grid.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

CROP = 336
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN = "<|image|>"  # id 32044, which vLLM's Phi3V hard-codes
MAX_IMAGES = 1000
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


def _scale(width: int, height: int, num_crops: int) -> int:
    """Crops along the long side: the largest s with s * ceil(s / ratio) <= num_crops."""
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    return scale - 1


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) of an image after the HD transform and padding: both multiples of 336."""
    transposed = width < height
    if transposed:
        width, height = height, width
    new_width = _scale(width, height, num_crops) * CROP
    new_height = max(1, int(new_width / (width / height)))  # a sliver image keeps one row (the hub resizes to 0)
    padded_height = math.ceil(new_height / CROP) * CROP
    return (padded_height, new_width) if transposed else (new_width, padded_height)


def num_image_tokens(width: int, height: int, num_crops: int) -> int:
    new_width, new_height = hd_size(width, height, num_crops)
    h_crop, w_crop = new_height // CROP, new_width // CROP
    return (h_crop * w_crop + 1) * 144 + 1 + (h_crop + 1) * 12


def _hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    width, height = image.size
    transposed = width < height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = image.size
    new_width = _scale(width, height, num_crops) * CROP
    new_height = max(1, int(new_width / (width / height)))  # a sliver image keeps one row (the hub resizes to 0)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    padded_height = math.ceil(new_height / CROP) * CROP
    top = (padded_height - new_height) // 2
    canvas = Image.new("RGB", (new_width, padded_height), (255, 255, 255))
    canvas.paste(image, (0, top))
    return canvas.transpose(Image.Transpose.TRANSPOSE) if transposed else canvas


class Phi3VImageProcessor(BaseImageProcessor):  # type: ignore[misc]  # transformers reads as untyped
    model_input_names = ["pixel_values", "image_sizes", "num_img_tokens"]

    def __init__(
        self,
        num_crops: int = 4,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_crops = num_crops
        self.image_mean = image_mean or CLIP_MEAN
        self.image_std = image_std or CLIP_STD
        self.do_convert_rgb = do_convert_rgb

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        return num_image_tokens(width, height, self.num_crops)

    def _pixels(self, image: Image.Image) -> tuple[torch.Tensor, list[int], int]:
        if self.do_convert_rgb:
            image = image.convert("RGB")
        hd = _hd_transform(image, self.num_crops)
        array = (np.asarray(hd, dtype=np.float32) / 255.0 - np.array(self.image_mean, dtype=np.float32)) / np.array(
            self.image_std, dtype=np.float32
        )
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
        _, height, width = tensor.shape
        global_view = torch.nn.functional.interpolate(
            tensor[None], size=(CROP, CROP), mode="bicubic", align_corners=False
        )
        crops = (
            tensor.reshape(3, height // CROP, CROP, width // CROP, CROP)
            .permute(1, 3, 0, 2, 4)
            .reshape(-1, 3, CROP, CROP)
        )
        views = torch.cat([global_view, crops], dim=0)
        padded = torch.zeros(self.num_crops + 1, 3, CROP, CROP)
        padded[: views.shape[0]] = views
        tokens = num_image_tokens(image.width, image.height, self.num_crops)
        return padded, [height, width], tokens

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        if not isinstance(images, list | tuple):
            images = [images]
        processed = [self._pixels(image) for image in images]
        return BatchFeature(
            data={
                "pixel_values": torch.stack([pixels for pixels, _, _ in processed]),
                "image_sizes": torch.tensor([size for _, size, _ in processed]),
                "num_img_tokens": [tokens for _, _, tokens in processed],
            }
        )


class Phi3VProcessor(ProcessorMixin):  # type: ignore[misc]  # transformers reads as untyped
    """Tokenizer plus image processor. `<|image_N|>` in the text stands for the N-th image; it becomes
    that image's run of `<|image|>` tokens (the hub's processor writes -N there and vLLM rewrites
    those to `<|image|>`; this one writes `<|image|>` directly)."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer: Any) -> None:
        super().__init__(image_processor, tokenizer)
        # vLLM reads the placeholder of image i as img_tokens[i] (the hub lists a million of them).
        self.img_tokens = [f"<|image_{i + 1}|>" for i in range(MAX_IMAGES)]

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        tokens: int = self.image_processor.calc_num_image_tokens_from_image_size(width, height)
        return tokens

    @classmethod
    def from_pretrained(
        cls, path: str, tokenizer: Any = None, num_crops: int | None = None, **kwargs: Any
    ) -> Phi3VProcessor:
        # Built directly, so loading does not depend on how a transformers release resolves the
        # sub-processors of remote code.
        image_processor = Phi3VImageProcessor.from_pretrained(path)
        if num_crops is not None:
            image_processor.num_crops = num_crops
        return cls(image_processor, tokenizer or AutoTokenizer.from_pretrained(path))

    def __call__(
        self, text: Any = None, images: Any = None, return_tensors: str | None = None, **kwargs: Any
    ) -> BatchFeature:
        pixels = self.image_processor.preprocess(images) if images else None
        data: dict[str, Any] = {}
        if pixels is not None:
            data.update(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
        if text is not None:
            text = text[0] if isinstance(text, list | tuple) else text
            input_ids: list[int] = []
            if pixels is None:  # as the model's own processor: no images, the text (tags too) is tokenized
                input_ids = self.tokenizer(text).input_ids  # vLLM 0.24 asks this for its prompt updates
            else:
                counts = pixels["num_img_tokens"]
                image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
                for index, chunk in enumerate(IMAGE_TAG.split(text)):
                    if index % 2 == 0:
                        input_ids += self.tokenizer(chunk).input_ids
                    else:
                        input_ids += [image_id] * counts[int(chunk) - 1]
            data["input_ids"] = torch.tensor([input_ids])
            data["attention_mask"] = torch.ones_like(data["input_ids"])
        return BatchFeature(data=data)
