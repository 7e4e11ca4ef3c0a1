"""The batch augmentations of ``data/transforms.py`` against torchvision's functional ops on fixed parameters.

Each random op draws its parameters and calls a deterministic core (``crop_at``, ``flip_where``,
``resized_crop_boxes``, ``adjust_colour``, ``erase_boxes``); the cores are compared with torchvision's
``pad`` + ``crop``, ``horizontal_flip``, ``resized_crop``, ``adjust_*`` and ``erase`` on fixed offsets, boxes
and factors, and the random ops are checked to produce what the torchvision op makes of some valid draw.
"""
import itertools

import pytest
import torch
from torchvision.transforms import RandomErasing, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from mobilenetv3.data import transforms as T

HEIGHT, WIDTH = 12, 17  # not square, so a transposed offset or box cannot pass


def _images(channels: int = 3, height: int = HEIGHT, width: int = WIDTH, batch: int = 9) -> torch.Tensor:
    """Float (B, C, H, W) in [0.05, 1]: no zeros, so an erased pixel is one that reads 0."""
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(7)) * 0.95 + 0.05


def _affine(batch: int = 4, height: int = 24, width: int = 32) -> torch.Tensor:
    """(B, 3, H, W) float, each channel a*x + b*y + c with its own slopes (x and y differ, so do channels)."""
    a, b, c = (torch.tensor(v).view(3, 1, 1) for v in ((0.02, -0.015, 0.01), (0.011, 0.017, -0.023), (0.3, 0.6, 0.5)))
    x, y = torch.arange(width, dtype=torch.float32), torch.arange(height, dtype=torch.float32)[:, None]
    return (a * x + b * y + c).expand(batch, 3, height, width).contiguous()


def _boxes(rows: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(top, left, height, width) rows, torchvision's order -> our (B, 4) float (left, top, right, bottom)."""
    return torch.tensor([(left, top, left + w, top + h) for top, left, h, w in rows], dtype=torch.float32)


def _within(values: torch.Tensor, bounds: tuple[float, float], slack: float) -> bool:
    """All ``values`` in ``bounds`` widened by the fraction ``slack`` (for sides rounded to whole pixels)."""
    return bool(((values >= bounds[0] * (1 - slack)) & (values <= bounds[1] * (1 + slack))).all())


# ------------------------------------------------------------------------------ pad + crop, flip
@pytest.mark.parametrize("padding", [1, 4])
def test_crop_at_is_pad_then_crop(padding):
    """Every corner, edge and an inner offset of the padded image, one per sample in the same batch."""
    offsets = list(itertools.product((0, padding, 2 * padding - 1, 2 * padding), repeat=2))
    images = torch.randint(0, 256, (len(offsets), 3, HEIGHT, WIDTH), dtype=torch.uint8)
    top, left = (torch.tensor(v) for v in zip(*offsets))
    out = T.crop_at(images, padding, top, left)
    for i, (top_i, left_i) in enumerate(offsets):
        assert torch.equal(out[i], TF.crop(TF.pad(images[i], [padding]), top_i, left_i, HEIGHT, WIDTH)), (top_i, left_i)


def test_pad_crop_is_some_random_crop():
    """Each output is torchvision's crop of the padded image at an offset in [0, 2p]^2, and the offsets vary."""
    padding = 2
    images = torch.randint(0, 256, (16, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    out = T.pad_crop(images, padding, torch.Generator().manual_seed(0))
    found = set()
    for image, crop in zip(images, out):
        padded = TF.pad(image, [padding])
        hits = [(top, left) for top, left in itertools.product(range(2 * padding + 1), repeat=2)
                if torch.equal(crop, TF.crop(padded, top, left, HEIGHT, WIDTH))]
        assert hits
        found.update(hits)
    assert len(found) > 4


def test_flip_where_is_horizontal_flip():
    """The flagged samples are torchvision's ``horizontal_flip``, the others untouched."""
    images = torch.randint(0, 256, (4, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    flip = torch.tensor([True, False, False, True])
    out = T.flip_where(images, flip)
    for image, flipped, mirrored in zip(images, out, flip):
        assert torch.equal(flipped, TF.horizontal_flip(image) if mirrored else image)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_hflip_flips_each_sample_or_not(p):
    """Each sample is either itself or torchvision's mirror image of it; p = 0 flips none, p = 1 all."""
    images = torch.randint(0, 256, (32, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    out = T.hflip(images, torch.Generator().manual_seed(0), p)
    flipped = [torch.equal(o, TF.horizontal_flip(i)) for i, o in zip(images, out)]
    kept = [torch.equal(o, i) for i, o in zip(images, out)]
    assert all(f != k for f, k in zip(flipped, kept))
    fewest, most = {0.0: (0, 0), 0.5: (1, 31), 1.0: (32, 32)}[p]
    assert fewest <= sum(flipped) <= most


# ------------------------------------------------------------------------------ resized crop
def test_resized_crop_boxes_at_box_size_is_the_crop():
    """An integer box resized to its own size is torchvision's plain crop.

    The image is affine in x and y (``_affine``), where our 2 x 2 bilinear samples per output pixel average to
    the value at the pixel centre, so the only tolerance is float32 rounding (1e-5); on a general image our
    sampling blurs by [1/8, 3/4, 1/8] where torchvision's resize of a same-size crop is the identity. Boxes keep
    a pixel from the image border, where roi_align clamps its samples."""
    images = _affine()
    rows = [(1, 1, 8, 8), (3, 5, 8, 8), (10, 20, 8, 8), (15, 23, 8, 8)]  # (top, left, h, w) in 24 x 32
    out = T.resized_crop_boxes(images, 8, _boxes(rows))
    for image, crop, (top, left, h, w) in zip(images, out, rows):
        torch.testing.assert_close(crop, TF.resized_crop(image, top, left, h, w, [8, 8], antialias=True),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [7, 11, 20])
def test_resized_crop_boxes_match_bilinear_resized_crop(size):
    """Non-square integer boxes, scaled up and down, against torchvision's bilinear ``resized_crop``.

    On an affine image both are exact (float32 rounding: 1e-5): bilinear sampling reproduces a linear function,
    and so does our mean of 2 x 2 bilinear samples. Torchvision's antialias filter does not (its discrete
    triangle weights bias a linear ramp on downscaling, up to ~2e-3 here) and it is not what we do, so the
    reference is ``antialias=False``. The outer ring of outputs is left out: scaling up, torchvision clamps
    its samples to the crop there, where ours read the pixels just outside the box (up to 3x, as here, only
    the outermost output samples beyond the crop's pixel centres)."""
    images = _affine()
    rows = [(1, 2, 20, 13), (2, 4, 9, 14), (5, 3, 7, 9), (1, 1, 22, 30)]  # (top, left, h, w)
    out = T.resized_crop_boxes(images, size, _boxes(rows))
    for image, crop, (top, left, h, w) in zip(images, out, rows):
        reference = TF.resized_crop(image, top, left, h, w, [size, size], antialias=False)
        torch.testing.assert_close(crop[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(24, 24), (24, 32)])
def test_random_resized_crop_at_scale_one_is_resize(height, width):
    """Scale 1 with the image's own aspect ratio is the whole image: torchvision's bilinear resize of it.

    Affine image, float32 tolerance, outer ring left out, as in the test above: at the image border roi_align
    clamps its samples into the image, 1/8 px off the centre at the same size."""
    images = _affine(height=height, width=width)
    out = T.random_resized_crop(images, 16, torch.Generator().manual_seed(0), scale=(1.0, 1.0),
                                ratio=(width / height, width / height))
    reference = TF.resize(images, [16, 16], antialias=False)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width, scale", [(10, 100, (0.5, 1.0)), (100, 10, (0.5, 1.0)),
                                                  (30, 40, (1.5, 2.0)), (40, 40, (1.5, 2.0))])
def test_resized_crop_fallback_is_torchvision(height, width, scale):
    """When no try can fit (an image too thin for half its area at a ratio in range, or more than its area),
    the box is torchvision's fallback: the whole image cut to the nearest ratio in range, centred."""
    ratio = (3 / 4, 4 / 3)
    top, left, h, w = RandomResizedCrop.get_params(torch.zeros(1, height, width), scale, ratio)
    boxes = T._random_resized_crop_boxes(5, height, width, torch.Generator().manual_seed(0), scale, ratio)
    assert boxes.tolist() == [[left, top, left + w, top + h]] * 5


@pytest.mark.parametrize("ratio", [(2.0, 2.5), (0.4, 0.5)])
def test_resized_crop_boxes_are_drawn_as_torchvision_draws_them(ratio):
    """Boxes lie inside the image, cover an area fraction in ``scale`` and have width / height in ``ratio``:
    torchvision's convention (a tall ``ratio`` gives tall boxes in both). Rounding the sides to whole pixels
    moves area and ratio by under 10% at these sizes (sides of 15 px or more)."""
    height, width, scale = 60, 50, (0.2, 0.4)
    boxes = T._random_resized_crop_boxes(64, height, width, torch.Generator().manual_seed(0), scale, ratio)
    left, top, right, bottom = boxes.unbind(1)
    torch.manual_seed(0)
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.zeros(1, height, width), scale, ratio)
                           for _ in range(64)], dtype=torch.float32)  # (top, left, h, w)
    for w, h in [(right - left, bottom - top), (theirs[:, 3], theirs[:, 2])]:
        assert _within(w * h / (height * width), scale, 0.1) and _within(w / h, ratio, 0.1)
    assert (boxes == boxes.round()).all() and (left >= 0).all() and (top >= 0).all()
    assert (right <= width).all() and (bottom <= height).all() and len(set(left.tolist())) > 5


# ------------------------------------------------------------------------------ colour
FACTORS = [(1.0, 1.0, 1.0), (1.4, 1.0, 1.0), (0.6, 1.0, 1.0), (1.0, 1.4, 1.0), (1.0, 0.6, 1.0), (1.0, 1.0, 1.4),
           (1.0, 1.0, 0.6), (1.4, 0.6, 1.4), (0.6, 1.4, 0.6), (1.4, 1.4, 1.4), (1.3, 0.7, 0.0)]  # (b, c, s)


def _torchvision_colour(image: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """torchvision's ColorJitter steps in our fixed order: brightness, contrast, saturation."""
    image = TF.adjust_brightness(image, brightness)
    return TF.adjust_saturation(TF.adjust_contrast(image, contrast), saturation)


@pytest.mark.parametrize("channels", [1, 3])
def test_adjust_colour_matches_torchvision(channels):
    """One factor triple per sample (each step alone, both ways, together, and strong enough to clamp, where
    the order of the steps shows) against torchvision's ``adjust_*`` in the same order.

    Tolerance 2e-4: our luma weights are PIL's 0.299, 0.587, 0.114, torchvision's tensor ops use 0.2989, so
    the gray mean (contrast) and gray image (saturation) differ by up to 1e-4 per step (1.1e-4 seen in all);
    everything else is the same formula. Factor 1 for all three is the identity, exactly."""
    images = _images(channels, batch=len(FACTORS))
    brightness, contrast, saturation = torch.tensor(FACTORS).T
    out = T.adjust_colour(images.clone(), brightness, contrast, saturation)
    for image, jittered, factors in zip(images, out, FACTORS):
        torch.testing.assert_close(jittered, _torchvision_colour(image, *factors), rtol=0, atol=2e-4)
    assert torch.equal(out[0], images[0])


def test_gray_is_torchvision_grayscale():
    """Luma within 2e-4 of torchvision's: 0.299 against 0.2989 for red on values up to 1, and float32 rounding."""
    images = _images()
    torch.testing.assert_close(T._gray(images), TF.rgb_to_grayscale(images), rtol=0, atol=2e-4)
    assert torch.equal(T._gray(images[:, :1]), images[:, :1])


def test_color_jitter_modifies_in_place_and_zero_strength_is_identity():
    """Strength 0 draws factors of exactly 1: the images come back as they were, in the same tensor."""
    images = _images()
    copy = images.clone()
    assert T.color_jitter(images, 0.0, torch.Generator().manual_seed(0)) is images and torch.equal(images, copy)
    assert not torch.equal(T.color_jitter(images, 0.4, torch.Generator().manual_seed(0)), copy)


# ------------------------------------------------------------------------------ cutout, erasing
ERASED = [(0, 0, 3, 5), (7, 10, 5, 7), (2, 3, 9, 2), (4, 1, 1, 12), (5, 5, 0, 0), (0, 0, HEIGHT, WIDTH)]  # (t, l, h, w)


def test_erase_boxes_is_torchvision_erase():
    """Corners, edges, tall, wide, empty and whole-image boxes, one per sample of one batch."""
    images = _images(batch=len(ERASED))
    out = T.erase_boxes(images, _boxes(ERASED), 0.0)
    for image, erased, (top, left, h, w) in zip(images, out, ERASED):
        assert torch.equal(erased, TF.erase(image, top, left, h, w, torch.tensor(0.0)))


def _erased_box(erased: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, h, w) bounding the zeros of one (C, H, W) image; (0, 0, 0, 0) when there are none."""
    rows, cols = (erased == 0).all(0).nonzero().unbind(1)
    if len(rows) == 0:
        return 0, 0, 0, 0
    top, left = rows.min().item(), cols.min().item()
    return top, left, rows.max().item() + 1 - top, cols.max().item() + 1 - left


@pytest.mark.parametrize("hole", [5, 100])
def test_cutout_is_erase_of_one_hole(hole):
    """Each output is torchvision's erase of one hole x hole square (cut to the image) inside the image."""
    images = _images(batch=32)
    out = T.cutout(images, hole, torch.Generator().manual_seed(0))
    corners = set()
    for image, erased in zip(images, out):
        top, left, h, w = _erased_box(erased)
        assert (h, w) == (min(hole, HEIGHT), min(hole, WIDTH))
        assert torch.equal(erased, TF.erase(image, top, left, h, w, torch.tensor(0.0)))
        corners.add((top, left))
    assert len(corners) > (1 if hole < HEIGHT else 0)


@pytest.mark.parametrize("ratio", [(3.0, 3.3), (0.3, 0.33)])
def test_random_erasing_is_erase_of_a_box_drawn_as_torchvision(ratio):
    """With p = 1 each output is torchvision's erase of one box whose area fraction is in ``scale`` and whose
    height / width is in ``ratio``, torchvision's convention (its ``get_params`` gives the same tall or wide
    boxes); whole-pixel sides move both by under 15% at these sizes (sides of 9 px or more). With p = 0
    nothing changes."""
    images, scale = _images(height=60, width=50, batch=32), (0.1, 0.2)
    out = T.random_erasing(images, 1.0, torch.Generator().manual_seed(0), scale, ratio)
    boxes = [_erased_box(erased) for erased in out]
    for image, erased, (top, left, h, w) in zip(images, out, boxes):
        assert torch.equal(erased, TF.erase(image, top, left, h, w, torch.tensor(0.0)))
    torch.manual_seed(0)
    theirs = [RandomErasing.get_params(images[0], scale, ratio, [0.0])[:4] for _ in range(32)]
    _, _, h, w = torch.tensor(boxes + theirs, dtype=torch.float32).T
    assert _within(h * w / (60 * 50), scale, 0.15) and _within(h / w, ratio, 0.15)
    assert torch.equal(T.random_erasing(images, 0.0, torch.Generator().manual_seed(0)), images)
