"""Untrusted uploads -> model inputs: image bytes decoded safely (v2 tensors: ``protocol.py``).

Every refusal is a ``BadRequest`` with the HTTP status it deserves and one line saying what is wrong. An
image is opened from its header first: its format must be one of ``FORMATS`` and its size at most
``max_pixels``, so a decompression bomb (a small file whose header claims hundreds of megapixels) is
refused before a single pixel is decoded, with a message that quotes that limit (PIL's own, which it checks
first, is raised to a server's larger one: ``allow_pixels``). The pixels are decoded by training's and
``predict``'s decoder (``data.images``: EXIF orientation, 16-bit, alpha, CMYK and ICC as a viewer shows them).
"""
from __future__ import annotations

import re
import warnings
from typing import Optional

import torch

from ..data.images import Conversions, open_image, to_mode
from ..data.transforms import Preprocessing, image_transform, normalize_batch

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; a decoded RGB image of that size is 120 MB


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def allow_pixels(max_pixels: int) -> None:
    """PIL refuses an image over ``Image.MAX_IMAGE_PIXELS`` on opening (twice that; a warning over it), before
    ``decode_image``'s own check: a server that allows more raises PIL's limit to its own, for the process (PIL
    has no per-call limit). Never lowered: every refusal of PIL's is then of an image over ``max_pixels``."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def decode_image(data: bytes, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS, name: str = "upload",
                 conversions: Optional[Conversions] = None) -> torch.Tensor:
    """Image file bytes -> uint8 (C, crop, crop) after the eval protocol's resize and center crop: what
    ``mobilenetv3 predict`` feeds the model for the same file (normalisation follows on the batch); what the
    decoder converted is counted into ``conversions``."""
    with _open_checked(data, max_pixels, name) as image:
        if image.format == "JPEG":
            image.draft(None, _draft_size(preprocessing))
        try:
            decoded = to_mode(image, preprocessing.in_chans, conversions)
        except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated or corrupt pixel data
            raise BadRequest(400, f"{name}: truncated or corrupt image ({' '.join(str(err).split())})") from None
    return image_transform(None, preprocessing, train=False)(decoded)


def decoded_pixels(data: bytes, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS,
                   name: str = "upload") -> int:
    """How many pixels ``decode_image`` will decode for these bytes, read from the header alone (a JPEG at the
    size its draft mode decodes it): the cost of the upload, known before decoding. Refuses what
    ``decode_image`` would refuse from the header (not an image, over ``max_pixels``)."""
    with _open_checked(data, max_pixels, name) as image:
        width, height = image.size
        if image.format == "JPEG":
            side = _draft_size(preprocessing)[0]
            scale = next((s for s in (8, 4, 2) if min(width, height) // side >= s), 1)  # as PIL's draft picks it
            width, height = -(-width // scale), -(-height // scale)
        return width * height


def _draft_size(preprocessing: Preprocessing) -> tuple[int, int]:
    """A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (its DCT scaled: far less work and memory) while its
    shorter side stays at least twice the resize: the antialiased resize that follows then sees almost the
    same pixels (a photo much larger than the model's input is all this changes)."""
    return 2 * preprocessing.resize, 2 * preprocessing.resize


def _open_checked(data: bytes, max_pixels: int, name: str):
    """The upload's image, header read and its size checked against ``max_pixels``."""
    if not data:
        raise BadRequest(400, f"{name}: empty body (send the image file's bytes)")
    image = _open_upload(data, max_pixels, name)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BadRequest(413, f"{name}: {width}x{height} image is {width * height / 1e6:.0f} megapixels, "
                              f"more than the limit of {max_pixels / 1e6:g} megapixels")
    return image


def _open_upload(data: bytes, max_pixels: int, name: str):
    """The upload's image, header read; PIL's refusal of a bomb said with the server's limit, not PIL's."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return open_image(data, FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            claimed = re.search(r"\((\d+) pixels\)", str(err))  # "Image size (N pixels) exceeds limit of ..."
            size = f"is {int(claimed.group(1)) / 1e6:.0f} megapixels, " if claimed else "is "
            raise BadRequest(413, f"{name}: image {size}more than the limit of {max_pixels / 1e6:g} megapixels") \
                from None
        except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
            raise BadRequest(400, f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None


def prepare_image(data: bytes, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS, name: str = "upload",
                  conversions: Optional[Conversions] = None) -> torch.Tensor:
    """Image file bytes -> the normalised float32 (1, C, crop, crop) model input (``decode_image``, then the
    protocol's mean and std): one upload's whole preparation, for a decoding thread."""
    return normalize_batch(decode_image(data, preprocessing, max_pixels, name, conversions).unsqueeze(0),
                           preprocessing)

