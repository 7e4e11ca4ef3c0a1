"""Image files decoded as the user sees them in an image viewer: the one decoder of training, eval, predict and
the server.

``to_mode`` turns an opened PIL image into 8-bit RGB (``channels`` 3) or L (1):

- **orientation**: the EXIF orientation tag (all 8 values; every phone camera writes one) is applied
  (``PIL.ImageOps.exif_transpose``).
- **bit depth**: 16-bit modes (``I;16``, ``I;16B``, a 16-bit PNG or TIFF) are scaled, value / 257, never
  clipped. The depth the *file* declares decides, not the values it holds: a 16-bit PNG whose values all lie
  below 256 is a dark image and stays dark. ``I`` images (32-bit integers) are scaled from the depth their file
  stores (16 bits: / 257; 32 bits: / 16843009, so that 2**32 - 1 is white; negatives are black); ``F`` (32-bit
  float) is taken as 0..1, as float TIFFs are written, times 255, clipped as a display clips. 16-bit RGB(A) and
  LA PNGs Pillow itself brings to 8 bits by their high byte (within 1 of value / 257).
- **palette and alpha**: ``P`` becomes RGB, or RGBA when it has a transparent colour (tRNS, as have some RGB
  and L PNGs); ``RGBA``, ``LA``, ``PA`` are composited on a **white** background, as browsers and image viewers
  show transparency on a page.
- **colour**: an embedded ICC profile other than sRGB is converted to sRGB (LittleCMS through ``PIL.ImageCms``,
  perceptual intent); CMYK goes to sRGB through its profile, or Pillow's plain formula without one; LAB through
  the CIE profile. A profile Pillow cannot use is ignored (the pixels are taken as sRGB).

The usual 8-bit RGB or grayscale JPEG/PNG without a rotation tag or profile is returned as decoded, without
a copy. What was converted is added to a ``Conversions`` count, which the callers report once per run.
"""
from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import UsageError

log = logging.getLogger(__name__)

BACKGROUND = 255  # white: what transparent pixels show through to
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2-8 mirrored and/or rotated
# Where PIL's getexif() finds an orientation: EXIF blocks (JPEG, PNG eXIf, WebP), ImageMagick's PNG text chunk,
# XMP; TIFF's own tags (``tag_v2``)
ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")
PLAIN_MODES = ("RGB", "L")
LCMS_NOCACHE = 0x0040  # cmsFLAGS_NOCACHE (ImageCms.Flags.NOCACHE in Pillow >= 10.3): no 1-pixel cache, thread-safe
SAMPLE_BITS = re.compile(r"(?:I|F|L|LA|RGB|RGBA|CMYK);(\d+)")  # a decoder's raw mode with bits per sample


@dataclass
class Conversions:
    """How many decoded images needed each conversion (an image may count under several)."""

    images: int = 0  # decoded, converted or not
    exif_rotated: int = 0
    high_depth_scaled: int = 0  # 16- or 32-bit pixels scaled to 8 bits
    alpha_composited: int = 0  # with transparent pixels, put on white
    cmyk_converted: int = 0
    icc_converted: int = 0  # a profile other than sRGB converted to sRGB

    LABELS = dict(exif_rotated="EXIF-rotated", high_depth_scaled="scaled from 16/32 bits to 8",
                  alpha_composited="alpha composited on white", cmyk_converted="CMYK to RGB",
                  icc_converted="ICC profile to sRGB")

    def add(self, other: Optional["Conversions"]) -> "Conversions":
        if other is not None:
            for field in fields(self):
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    def counts(self) -> dict[str, int]:
        """The conversions made at least once, by name (``images`` left out)."""
        return {name: getattr(self, name) for name in self.LABELS if getattr(self, name)}

    def __bool__(self) -> bool:
        return bool(self.counts())

    def __str__(self) -> str:
        done = ", ".join(f"{count} {self.LABELS[name]}" for name, count in self.counts().items())
        return f"of {self.images} images decoded: {done or 'none converted'}"


def open_image(source: Union[str, Path, bytes], formats: Optional[tuple[str, ...]] = None):
    """The image of a file (path) or of its bytes, header read, pixels not decoded yet."""
    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats)


def load_image(source: Union[str, Path, bytes], channels: int, conversions: Optional[Conversions] = None,
               name: Optional[str] = None):
    """An image file (path or bytes) decoded fully as ``to_mode`` does; an unreadable one is a ``UsageError``
    naming ``name`` (the path by default)."""
    from PIL import Image

    try:
        with open_image(source) as image:
            return to_mode(image, channels, conversions)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:  # OSError: unidentified
        label = name or (str(source) if not isinstance(source, bytes) else "image")
        raise UsageError(f"{label}: unreadable image ({' '.join(str(err).split())})") from None


def to_mode(image, channels: int, conversions: Optional[Conversions] = None):
    """An opened PIL image decoded and converted to 8-bit RGB (``channels`` 3) or L (1) as a viewer shows it
    (see the module's docstring); counts its conversions into ``conversions``."""
    bits = stored_bits(image)  # the tile says what the file stores; gone once loaded
    image.load()
    mode, orientation, icc = "RGB" if channels == 3 else "L", _orientation(image), image.info.get("icc_profile")
    if _plain(image, bits, orientation, icc):  # the usual file
        if conversions is not None:
            conversions.images += 1
        return image if image.mode == mode else image.convert(mode)  # no copy for the usual RGB JPEG
    image, done = _as_shown(image, bits, orientation, icc)
    if conversions is not None:
        conversions.add(done)
    return image if image.mode == mode else image.convert(mode)


def _as_shown(image, bits: int, orientation: int, icc: Optional[bytes]) -> tuple[object, Conversions]:
    """A loaded image that needs converting -> 8-bit RGB or L as a viewer shows it, and what was done."""
    done = Conversions(images=1)
    if orientation != 1:
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
        done.exif_rotated = 1
    if bits > 8:
        image = _to_8_bits(image, bits)
        done.high_depth_scaled = 1
    image, done.alpha_composited = _flatten(image)
    image, done.cmyk_converted, done.icc_converted = _to_srgb(image, icc)
    return image, done


def is_plain(image) -> bool:
    """Whether an opened image decodes to its pixels as stored: 8-bit RGB or L, upright, sRGB (or no profile);
    what a decoder that knows nothing of the above (``torchvision.io.decode_jpeg``) gets right."""
    return _plain(image, stored_bits(image), _orientation(image), image.info.get("icc_profile"))


def _plain(image, bits: int, orientation: int, icc: Optional[bytes]) -> bool:
    return (image.mode in PLAIN_MODES and bits <= 8 and orientation == 1 and "transparency" not in image.info
            and _is_srgb(icc))


def stored_bits(image) -> int:
    """Bits per sample the file stores, from the decoder's raw mode ("I;16B", "RGB;16B", "F;32F"; not BMP's
    "BGR;16", 16 bits a pixel); 8 when it names none. Read before ``load()``, which clears it."""
    found = 0
    for tile in image.tile:
        args = tile[3]  # (codec, extents, offset, args): the raw mode, or a tuple that starts with it
        raw = args if isinstance(args, str) else args[0] if args else ""
        match = SAMPLE_BITS.match(raw) if isinstance(raw, str) and ";" in raw else None
        found = max(found, int(match.group(1))) if match else found
    if found:
        return found
    return 32 if image.mode in ("I", "F") else 16 if image.mode.startswith("I;16") else 8


def _orientation(image) -> int:
    if not (hasattr(image, "tag_v2") or any(key in image.info for key in ORIENTATION_SOURCES)):
        return 1  # nowhere for a tag to be: spares getexif's parsing (6 us) on the usual file
    try:
        orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError, SyntaxError, OSError):  # a corrupt EXIF block: as if none
        return 1
    return orientation if 1 <= orientation <= 8 else 1  # a value outside the table: as exif_transpose, upright


def _to_8_bits(image, bits: int):
    """16/32-bit integer and float modes -> L, scaled from the stored depth (see the module's docstring);
    other modes (16-bit RGB/LA, already brought to 8 bits by Pillow) as they are."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image)
    if image.mode == "F":
        scaled = np.nan_to_num(values, nan=0.0).clip(0, 1) * 255
    else:
        top = 255 if bits <= 8 else 65535 if bits <= 16 else 2**32 - 1
        scaled = values.astype(np.float64).clip(0, top) * (255 / top)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def _flatten(image) -> tuple[object, int]:
    """Palette and alpha modes -> RGB or L, transparent pixels composited on white; 1 when any were."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("PA", "RGBa"):
        image = image.convert("RGBA")
    elif image.mode == "La" or (image.mode == "L" and "transparency" in image.info):
        image = image.convert("LA")
    elif image.mode == "RGB" and "transparency" in image.info:  # one colour transparent (tRNS)
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA"):
        return image, 0
    base_mode, alpha = image.mode[:-1], image.getchannel("A")
    if alpha.getextrema()[0] == 255:  # opaque everywhere: nothing shows through
        return image.convert(base_mode), 0
    background = Image.new(base_mode, image.size, (BACKGROUND,) * len(base_mode))
    background.paste(image.convert(base_mode), mask=alpha)
    return background, 1


def _to_srgb(image, icc: Optional[bytes]) -> tuple[object, int, int]:
    """CMYK, LAB and images with a profile other than sRGB -> sRGB; (image, CMYK converted, ICC converted)."""
    cmyk = int(image.mode == "CMYK")
    if image.mode not in ("RGB", "L", "CMYK", "LAB") or (image.mode != "LAB" and _is_srgb(icc)):
        return (image.convert("RGB") if cmyk else image), cmyk, 0
    transform = _transform_to_srgb(icc if image.mode != "LAB" else None, image.mode)
    if transform is None:  # no profile Pillow can use: as the pixels are
        return (image.convert("RGB") if cmyk or image.mode == "LAB" else image), cmyk, 0
    from PIL import ImageCms

    try:
        return ImageCms.applyTransform(image, transform), cmyk, int(icc is not None)
    except (ImageCms.PyCMSError, ValueError, OSError) as err:
        log.debug("ICC conversion failed (%s): pixels taken as sRGB", err)
        return (image.convert("RGB") if image.mode != "L" else image), cmyk, 0


@functools.lru_cache(maxsize=64)
def _is_srgb(icc: Optional[bytes]) -> bool:
    """No profile, an sRGB one (by its description), or one Pillow cannot read: the pixels are taken as sRGB."""
    if not icc:
        return True
    profile = _profile(icc)
    return profile is None or "srgb" in (profile.profile.profile_description or "").lower()


@functools.lru_cache(maxsize=64)
def _transform_to_srgb(icc: Optional[bytes], mode: str):
    """A LittleCMS transform from ``icc`` (``None``: CIE LAB) in ``mode`` to sRGB RGB, built once per profile;
    ``None`` when the profile is unusable or does not fit the mode. NOCACHE: the server applies it from threads."""
    from PIL import ImageCms

    source = _profile(icc) if icc is not None else ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
    if source is None:
        return None
    try:
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB", flags=LCMS_NOCACHE)
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
        return None


def _profile(icc: bytes):
    from PIL import ImageCms

    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
        return None
