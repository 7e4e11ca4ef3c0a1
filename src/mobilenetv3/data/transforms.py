"""Named augmentation presets, run on whole uint8 batches (in-memory data) or per image (image files).

A preset is a ``Recipe`` (what to do in training) plus a ``Preprocessing`` (the eval protocol:
resize, center crop, interpolation, mean/std, channels), which is saved with checkpoints and
recorded with every result. Two executors run a recipe:

- ``BatchAugment`` works on a whole (B, C, H, W) uint8 batch with vectorised per-sample random
  crops, flips, colour jitter, cutout and erasing, drawing from one ``torch.Generator`` per batch.
  This is what keeps a 2-core CPU from being data-bound on CIFAR and Fashion-MNIST.
- ``image_transform`` builds torchvision ``transforms.v2`` pipelines for decoded image files.

Presets:
- ``seed-imagenet``: RandomResizedCrop(size, scale 0.08-1, ratio 3/4-4/3), flip, ColorJitter(0.4, 0.4,
  0.4), ImageNet mean/std; eval Resize(size / 0.875) + CenterCrop(size), i.e. 256/224.
- ``seed-cifar10``: RandomCrop(32, pad 4), flip, ColorJitter(0.4, 0.4, 0.4), Resize(size), the seed's
  CIFAR mean/std, CutOut (112 at 224 px, scaled); eval Resize(size).
- ``small``: for 28-32 px images kept small: RandomCrop(pad size/8), flip; eval Resize(size).
- ``none``: the eval protocol for training too (tests, debugging).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import UsageError

PRESETS = ("small", "seed-cifar10", "seed-imagenet", "none")


@dataclass(frozen=True)
class Preprocessing:
    """The eval protocol: resize the shorter side to ``resize``, center-crop ``crop``, normalise."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        return cls(int(values["resize"]), int(values["crop"]), str(values["interpolation"]),
                   tuple(values["mean"]), tuple(values["std"]), int(values["in_chans"]))


@dataclass(frozen=True)
class Recipe:
    """Training augmentation; zero or None switches a step off."""

    size: int
    random_resized_crop: bool = False  # else: resize to ``size``
    pad_crop: int = 0  # RandomCrop padding at the native size, before resizing (image files: at 32 px, scaled)
    hflip: bool = True
    color_jitter: float = 0.0  # brightness = contrast = saturation strength
    cutout: int = 0  # square hole side in pixels at ``size``
    auto_augment: Optional[str] = None  # "randaugment" or "trivialaugment"
    random_erasing: float = 0.0


def build_preset(name: str, size: int, mean, std, in_chans: int, native_size: Optional[int] = None, *,
                 eval_resize: Optional[int] = None, interpolation: str = "bilinear", cutout: Optional[int] = None,
                 hflip: bool = True, auto_augment: Optional[str] = None,
                 random_erasing: float = 0.0) -> tuple[Recipe, Preprocessing]:
    """The recipe and eval protocol of preset ``name`` at ``size`` px for data of ``native_size`` px."""
    if name not in PRESETS:
        raise UsageError(f"unknown transform preset {name!r}; choose one of: {', '.join(PRESETS)}")
    mean, std = _match_channels(mean, in_chans), _match_channels(std, in_chans)
    extra = dict(auto_augment=auto_augment, random_erasing=random_erasing, hflip=hflip)
    if name == "seed-imagenet":
        recipe = Recipe(size, random_resized_crop=True, color_jitter=0.4, **extra)
        resize = eval_resize or int(round(size / 0.875))
    elif name == "seed-cifar10":
        hole = cutout if cutout is not None else round(112 * size / 224)
        recipe = Recipe(size, pad_crop=round((native_size or 32) / 8), color_jitter=0.4, cutout=hole, **extra)
        resize = eval_resize or size
    elif name == "small":
        recipe = Recipe(size, pad_crop=round((native_size or 32) / 8), cutout=cutout or 0, **extra)
        resize = eval_resize or size
    else:  # "none"
        recipe = Recipe(size, hflip=False)
        resize = eval_resize or size
    return recipe, Preprocessing(resize, size, interpolation, mean, std, in_chans)


def _match_channels(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    return (sum(v * w for v, w in zip(values, (0.299, 0.587, 0.114))),) if in_chans == 1 else values[:in_chans]


# ------------------------------------------------------------------------------ batch operations
def to_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(B, C, H, W) with C in {1, 3} -> (B, in_chans, H, W): gray is repeated, RGB becomes luma."""
    channels = images.shape[1]
    if channels == in_chans:
        return images
    if channels == 1:
        return images.expand(-1, in_chans, -1, -1)
    if in_chans == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype)
    raise UsageError(f"cannot turn {channels}-channel images into {in_chans} channels")


def pad_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size=H, padding) per sample: zero-pad, then take an H x W window at a random offset."""
    batch = images.shape[0]
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    return crop_at(images, padding, top, left)


def crop_at(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """torchvision's ``pad(padding)`` then ``crop(top, left, H, W)`` per sample: zero-pad every side, then take
    the H x W window whose top-left corner is (``top[i]``, ``left[i]``) in the padded image; (B,) integers."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (top[:, None] + torch.arange(height))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(width))[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(batch)[:, None, None], rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """RandomHorizontalFlip per sample: each image is mirrored with probability ``p``."""
    return flip_where(images, torch.rand(images.shape[0], generator=generator) < p)


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """torchvision's ``horizontal_flip`` on the samples where ``flip`` ((B,) bool) is set; the others as they are."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_resized_crop(images: torch.Tensor, size: int, generator: torch.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling (10 tries, then a center crop) per sample,
    cropped and resized bilinearly for the whole batch at once with ``roi_align``. Float in, float out."""
    batch, _, height, width = images.shape
    return resized_crop_boxes(images, size, _random_resized_crop_boxes(batch, height, width, generator, scale, ratio))


def _random_resized_crop_boxes(batch: int, height: int, width: int, generator: torch.Generator,
                               scale, ratio) -> torch.Tensor:
    """(B, 4) float (left, top, right, bottom) integer-valued boxes, drawn as torchvision's RandomResizedCrop:
    area fraction in ``scale``, width / height in ``ratio``, first of 10 tries that fits, else the fallback."""
    area = height * width
    tries = 10
    target = area * torch.empty(batch, tries).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((batch,), -1))
    pick = first.clamp(min=0)
    w, h = w[torch.arange(batch), pick], h[torch.arange(batch), pick]
    fw, fh = _fallback_crop(width, height, ratio)
    fallback = first < 0
    w = torch.where(fallback, torch.tensor(float(fw)), w)
    h = torch.where(fallback, torch.tensor(float(fh)), h)
    top = torch.floor(torch.rand(batch, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(batch, generator=generator) * (width - w + 1))
    top = torch.where(fallback, torch.floor((height - h) / 2), top)
    left = torch.where(fallback, torch.floor((width - w) / 2), left)
    return torch.stack([left, top, left + w, top + h], 1)


def _fallback_crop(width: int, height: int, ratio) -> tuple[int, int]:
    """RandomResizedCrop's size when no try fits, as torchvision: the whole image cut to the nearest ratio in range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, round(width / ratio[0])
    if in_ratio > ratio[1]:
        return round(height * ratio[1]), height
    return width, height


def resized_crop_boxes(images: torch.Tensor, size: int, boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's ``resized_crop`` per sample for the whole batch at once with ``roi_align``: each sample's
    box ((B, 4) float (left, top, right, bottom) in pixels) resized bilinearly to size x size, every output
    pixel the mean of 2 x 2 bilinear samples (not torchvision's antialias filter). Float in, float out."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], 1)  # (B, 5): index, box
    return roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1 - s, 1 + s] per sample, applied by ``adjust_colour``.
    Float images in [0, 1]; modified in place and returned: whole-batch in-place passes are what make this
    cheaper than per-image PIL enhancement."""
    factors = torch.empty(3, images.shape[0]).uniform_(1 - strength, 1 + strength, generator=generator)
    factors = factors.to(images.device)  # drawn on the CPU: the same draws wherever the images are
    return adjust_colour(images, factors[0], factors[1], factors[2])


def adjust_colour(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation`` with per-sample factors
    ((B,) each), in that fixed order (ColorJitter shuffles it), each clamped to [0, 1]; saturation leaves one
    channel alone. Float (B, C, H, W) in [0, 1], modified in place and returned."""
    brightness, contrast, saturation = (f.view(-1, 1, 1, 1) for f in (brightness, contrast, saturation))
    images.mul_(brightness).clamp_(0, 1)
    mean = _gray(images).mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    images.mul_(contrast).add_(mean * (1 - contrast)).clamp_(0, 1)
    if images.shape[1] == 3:
        gray = _gray(images)  # of the image before scaling it in place
        images.mul_(saturation).add_(gray * (1 - saturation)).clamp_(0, 1)
    return images


def _gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma with weights 0.299, 0.587, 0.114 (PIL's; torchvision's tensor ops use 0.2989)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _random_boxes(height: int, width: int, box_h: torch.Tensor, box_w: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """(B, 4) float (left, top, right, bottom): one box of size (``box_h[i]``, ``box_w[i]``) per sample at a
    uniformly random position inside the image."""
    top = torch.floor(torch.rand(len(box_h), generator=generator) * (height - box_h + 1))
    left = torch.floor(torch.rand(len(box_w), generator=generator) * (width - box_w + 1))
    return torch.stack([left, top, left + box_w, top + box_h], 1)


def _box_masks(height: int, width: int, boxes: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixels inside each sample's box ((B, 4) (left, top, right, bottom), right and
    bottom excluded)."""
    left, top, right, bottom = (edge.view(-1, 1, 1) for edge in boxes.unbind(1))
    rows = torch.arange(height, device=boxes.device).view(1, -1, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return inside[:, None]


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """torchvision's ``erase`` per sample: each sample's box ((B, 4) (left, top, right, bottom) in pixels)
    set to ``value`` in every channel; an empty box erases nothing."""
    height, width = images.shape[-2:]
    return images.masked_fill(_box_masks(height, width, boxes.to(images.device)), value)


def cutout(images: torch.Tensor, hole: int, generator: torch.Generator) -> torch.Tensor:
    """The seed's CutOut: zero one hole x hole square per image (after normalising: the mean colour)."""
    batch, _, height, width = images.shape
    hole_h, hole_w = torch.full((batch,), float(min(hole, height))), torch.full((batch,), float(min(hole, width)))
    return erase_boxes(images, _random_boxes(height, width, hole_h, hole_w, generator))


def random_erasing(images: torch.Tensor, p: float, generator: torch.Generator,
                   scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
    """RandomErasing per sample with probability ``p``: one box of random area and aspect set to 0."""
    batch, _, height, width = images.shape
    area = height * width * torch.empty(batch).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    box_h = torch.sqrt(area * aspect).round().clamp(1, height)
    box_w = torch.sqrt(area / aspect).round().clamp(1, width)
    boxes = _random_boxes(height, width, box_h, box_w, generator)
    erase = torch.rand(batch, generator=generator) < p
    boxes[:, 2:] = torch.where(erase[:, None], boxes[:, 2:], boxes[:, :2])  # kept samples: an empty box
    return erase_boxes(images, boxes)


def resize(images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Float (B, C, H, W) -> (B, C, size, size) for square inputs; shorter side to ``size`` otherwise."""
    height, width = images.shape[-2:]
    if min(height, width) == size and height == width:
        return images
    scale = size / min(height, width)
    # torchvision's rule: the shorter side becomes ``size``, the longer one int(size * long / short)
    out_size = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
    antialias = interpolation in ("bilinear", "bicubic") and scale < 1
    align = False if interpolation in ("bilinear", "bicubic") else None
    return F.interpolate(images, size=out_size, mode=interpolation, align_corners=align, antialias=antialias)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The middle ``size`` x ``size``; an odd margin splits as torchvision's CenterCrop does (rounded half to even)."""
    height, width = images.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def _auto_augment(images: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandAugment / TrivialAugmentWide, one draw per image, seeded from the batch."""
    from torchvision.transforms import v2

    op = v2.RandAugment() if name == "randaugment" else v2.TrivialAugmentWide()
    seeds = torch.randint(0, 2**62, (images.shape[0],), generator=generator)
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds.tolist()):
            torch.default_generator.manual_seed(seed)
            out[i] = op(images[i])
    return out


# --------------------------------------------------------------------------------------- executors
class BatchAugment:
    """Runs a ``Recipe`` (``train=True``) or the eval protocol on a (B, C, H, W) uint8 batch.

    Returns normalised float32 (B, in_chans, crop, crop). Randomness comes only from ``generator``.
    """

    def __init__(self, recipe: Optional[Recipe], preprocessing: Preprocessing, train: bool):
        if train and recipe is None:
            raise TypeError("training augmentation needs a Recipe")
        self.recipe, self.pre, self.train = recipe, preprocessing, train

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The in-memory path: geometry and colour on the whole batch, in the seed's order."""
        r, pre = self.recipe, self.pre
        images = to_channels(images, pre.in_chans)
        if not self.train:
            images = resize(images.float() / 255, pre.resize, pre.interpolation)
            return self.finish(center_crop(images, pre.crop), generator)
        if r.auto_augment:
            images = _auto_augment(images, r.auto_augment, generator)
        if r.pad_crop:
            images = pad_crop(images, r.pad_crop, generator)
        if r.hflip:
            images = hflip(images, generator)
        images = images.float() / 255
        if r.random_resized_crop:
            images = random_resized_crop(images, r.size, generator)
        if r.color_jitter:  # the seed jitters before resizing
            images = color_jitter(images, r.color_jitter, generator)
        if not r.random_resized_crop:
            images = center_crop(resize(images, r.size, pre.interpolation), r.size)
        return self.finish(images, generator, jitter=False)

    def finish(self, images: torch.Tensor, generator: Optional[torch.Generator], jitter: bool = True) -> torch.Tensor:
        """The batch steps after geometry, shared by both paths: colour jitter (training), normalisation,
        cutout and random erasing (training). ``images``: uint8, or float in [0, 1], at the final size."""
        train = self.train and generator is not None
        if not train:
            return normalize_batch(images, self.pre)
        images = images.float().div_(255) if images.dtype == torch.uint8 else images.clone()  # ours to modify
        if jitter and self.recipe.color_jitter:
            images = color_jitter(images, self.recipe.color_jitter, generator)
        images = normalize_batch(images, self.pre)
        if self.recipe.cutout:
            images = cutout(images, self.recipe.cutout, generator)
        if self.recipe.random_erasing:
            images = random_erasing(images, self.recipe.random_erasing, generator)
        return images


def normalize_batch(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (or float in [0, 1]) (B, C, H, W) at the final size -> float32 normalised with the protocol's
    mean and std: the last step of the eval protocol, for every loader and for ``predict``."""
    images = images.float().div_(255) if images.dtype == torch.uint8 else images.float().clone()
    mean = torch.tensor(preprocessing.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images.sub_(mean).div_(std)


def image_transform(recipe: Optional[Recipe], preprocessing: Preprocessing, train: bool):
    """torchvision v2 pipeline for one decoded PIL image -> uint8 (in_chans, crop, crop): the per-image
    geometry (crop, resize, flip, auto-augment). Colour jitter, normalisation, cutout and erasing follow on
    the whole batch (``BatchAugment.finish``), which is what makes this faster than a per-image PIL pipeline.
    """
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(preprocessing.interpolation)
    steps = []
    if not train:
        steps += [v2.Resize(preprocessing.resize, interpolation=interpolation, antialias=True),
                  v2.CenterCrop(preprocessing.crop)]
    else:
        if recipe.random_resized_crop:
            steps.append(v2.RandomResizedCrop(recipe.size, interpolation=interpolation, antialias=True))
        else:
            steps += [v2.Resize(recipe.size, interpolation=interpolation, antialias=True), v2.CenterCrop(recipe.size)]
            if recipe.pad_crop:
                steps.append(v2.RandomCrop(recipe.size, padding=round(recipe.pad_crop * recipe.size / 32)))
        if recipe.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if recipe.auto_augment:
            steps.append(v2.RandAugment() if recipe.auto_augment == "randaugment" else v2.TrivialAugmentWide())
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)

class ImageGeometry:
    """Per-image geometry for decoded image files: ``(image, seed) -> uint8 (C, size, size)``.

    ``image`` is a PIL image (the CPU loader) or a uint8 (C, H, W) tensor on any device (``--decode gpu``);
    both draw the same crops and flips from ``seed``. Training with RandomResizedCrop (the ImageNet recipe)
    crops and resizes in one step (PIL ``resize(box=...)``, or ``resized_crop`` on a tensor) and flips,
    drawing from ``random.Random(seed)``: no intermediate copies, no torch RNG. Everything else is
    torchvision ``transforms.v2`` seeded with ``seed``. Colour jitter, normalisation, cutout and erasing
    follow on the whole batch (``BatchAugment.finish``).
    """

    def __init__(self, recipe: Optional[Recipe], preprocessing: Preprocessing, train: bool):
        from PIL import Image

        self.recipe, self.train = recipe, train
        self.fast = train and recipe is not None and recipe.random_resized_crop and not recipe.auto_augment
        self.pipeline = image_transform(recipe, preprocessing, train)
        self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                         "nearest": Image.NEAREST}[preprocessing.interpolation]
        self.interpolation = preprocessing.interpolation

    def __call__(self, image, seed: int) -> torch.Tensor:
        if not self.fast:
            with torch.random.fork_rng(devices=[]):  # the CPU generator only: a GPU's (dropout) is the step's
                torch.default_generator.manual_seed(seed)
                return self.pipeline(image)
        import random

        import numpy as np
        from PIL import Image

        rng = random.Random(seed)
        if isinstance(image, torch.Tensor):
            return self._tensor_crop(image, rng)
        box = _resized_crop_box(image.width, image.height, rng)
        size = self.recipe.size
        image = image.resize((size, size), self.resample, box=box)
        if self.recipe.hflip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.array(image)  # (H, W, C) or (H, W), a writable copy
        return torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)[None]

    def _tensor_crop(self, image: torch.Tensor, rng) -> torch.Tensor:
        """The fast path on a uint8 (C, H, W) tensor: the same box and flip as the PIL path draws."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        left, top, right, bottom = _resized_crop_box(image.shape[-1], image.shape[-2], rng)
        size = self.recipe.size
        out = TF.resized_crop(image, top, left, bottom - top, right - left, [size, size],
                              interpolation=InterpolationMode(self.interpolation), antialias=True)
        return out.flip(-1) if self.recipe.hflip and rng.random() < 0.5 else out


def _resized_crop_box(width: int, height: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple:
    """torchvision's RandomResizedCrop box (10 tries, then the whole image cut to the ratio range)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    w, h = _fallback_crop(width, height, ratio)
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


