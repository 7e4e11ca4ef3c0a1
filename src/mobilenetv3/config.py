"""Training configuration: typed dataclasses, YAML presets, flag overrides, plain-dict round trips.

Defaults live here and only here, and they are the embedded default recipe (the ``fashion-mnist``
preset: Small at 28 px with a stride-1 stem on Fashion-MNIST, 3 epochs), so ``mobilenetv3 train`` with no
preset runs what the README's demo runs. A run's configuration is resolved in three layers: these defaults,
then a YAML preset (``<name>.yaml`` in the package's ``configs/``, or a path), then command-line flags. The
CLI builds one flag per field from the ``help`` metadata below (``--batch-size``, ``--lr``, ...).
"""
from __future__ import annotations

import logging
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .errors import SettingError, UsageError

log = logging.getLogger(__name__)



def _f(default: Any, help: str, choices: Optional[tuple] = None):
    return field(default=default, metadata=dict(help=help, choices=choices))


@dataclass
class ModelConfig:
    model: str = _f("mobilenetv3_small", "model name (mobilenetv3_large, mobilenetv3_small)")
    num_classes: Optional[int] = _f(None, "classifier outputs (default: the dataset's class count)")
    width_mult: float = _f(1.0, "width multiplier")
    dropout: float = _f(0.0, "dropout before the classifier (the seed: 0)")
    head_channels: Optional[int] = _f(None, "hidden head width (default 1280 Large, 1024 Small; the seed: 1280)")
    head_bias: bool = _f(True, "bias in the hidden head, as torchvision and timm; the seed has none: trained with "
                               "--no-head-bias, weights convert back to a MindSpore .ckpt")
    stem_stride: Optional[int] = _f(None, "stride of the first convolution: 1 keeps 28-32 px images at full "
                                          "resolution through the stem (4x the compute; such weights stay in our "
                                          "formats); default: 1 for images of 32 px or less, else the paper's 2",
                                    (1, 2))
    in_chans: Optional[int] = _f(None, "input channels (default: the dataset's, 1 for grayscale)")
    bn_eps: float = _f(1e-5, "BatchNorm eps")
    bn_momentum: float = _f(0.1, "BatchNorm momentum (PyTorch convention; MindSpore's 0.9 is 0.1 here)")
    pretrained: Optional[str] = _f(None, "initialise from these weights (any format; a different class count "
                                         "resets the classifier)")
    freeze_backbone: bool = _f(False, "train only the classifier (linear probing)")


@dataclass
class DataConfig:
    dataset: str = _f("fashion-mnist", "dataset format", ("fashion-mnist", "mnist", "cifar10", "imagenet",
                                                           "synthetic"))
    data_path: Optional[str] = _f(None, "dataset folder (fashion-mnist: found in /usr/share/datasets if omitted)")
    download: bool = _f(False, "download fashion-mnist/mnist/cifar10 with torchvision if absent (needs internet)")
    transform: str = _f("none", "augmentation preset", ("small", "seed-cifar10", "seed-imagenet", "none"))
    image_size: int = _f(28, "train/eval image size in pixels")
    eval_resize: Optional[int] = _f(None, "resize before the eval center crop (default: image_size / 0.875 for "
                                          "seed-imagenet, image_size otherwise)")
    interpolation: str = _f("bilinear", "resize interpolation", ("bilinear", "bicubic", "nearest"))
    cutout: Optional[int] = _f(None, "CutOut hole size in pixels (seed-cifar10 default: 112 at 224, scaled)")
    auto_augment: Optional[str] = _f(None, "extra augmentation", ("randaugment", "trivialaugment"))
    random_erasing: float = _f(0.0, "RandomErasing probability")
    mixup_alpha: float = _f(0.0, "mixup alpha (0: off)")
    cutmix_alpha: float = _f(0.0, "cutmix alpha (0: off)")
    batch_size: int = _f(256, "batch size per process")
    eval_batch_size: Optional[int] = _f(None, "evaluation batch size per process (default: 2 x batch size)")
    workers: Optional[int] = _f(None, "data-loading worker processes (default: from the CPU count)")
    skip_bad_images: bool = _f(False, "skip unreadable images (counted in the log) instead of stopping")
    synthetic_samples: int = _f(512, "synthetic dataset: images per split (train; eval gets a quarter)")
    val_split: int = _f(0, "hold out N training images (drawn with --seed, saved as val_indices.json) to validate "
                           "on each epoch; the test split is then scored once, at the end (0: validate on it)")
    decode: str = _f("cpu", "where ImageFolder JPEGs are decoded: cpu (PIL, in the workers) or gpu (batched "
                            "torchvision.io.decode_jpeg on the run's GPU)", ("cpu", "gpu"))


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimizer", ("sgd", "rmsprop", "adamw"))
    lr: float = _f(0.8, "peak learning rate at --lr-reference-batch")
    lr_reference_batch: Optional[int] = _f(None, "global batch that --lr is given for; the LR scales linearly "
                                                 "with the real global batch (default: 256 for the built-in LR, "
                                                 "a --lr you give is used as given)")
    lr_init: float = _f(0.0, "learning rate at the first warmup step")
    lr_end: float = _f(0.0, "learning rate at the last step")
    warmup_epochs: float = _f(0.9, "linear warmup length in epochs (scaled with --epochs when only that is given)")
    epochs: int = _f(3, "training epochs")
    momentum: float = _f(0.9, "SGD/RMSProp momentum")
    nesterov: bool = _f(True, "Nesterov momentum (SGD only; the seed's Momentum is plain)")
    weight_decay: float = _f(5e-5, "weight decay (never on BatchNorm weights)")
    decay_bias: bool = _f(True, "apply weight decay to biases too, as the seed does")
    label_smoothing: float = _f(0.1, "label smoothing epsilon")
    smoothing: str = _f("seed", "seed: off-value e/(N-1) as MindSpore; torch: PyTorch's e/N", ("seed", "torch"))
    grad_clip: Optional[float] = _f(None, "clip the gradient norm to this value")
    lr_schedule: str = _f("warmup-cosine", "warmup-cosine: the seed's per-step formula; stored: the per-step rates "
                                           "that a resumed seed training .ckpt stores", ("warmup-cosine", "stored"))


@dataclass
class RunConfig:
    run_dir: Optional[str] = _f(None, "run directory (default: runs/<config>-<time>)")
    resume: Optional[str] = _f(None, "continue from a checkpoint: a path, or 'auto' for the run's last.pt")
    seed: int = _f(1, "seed for Python, NumPy, torch and every data-loader worker")
    deterministic: bool = _f(False, "use PyTorch's deterministic algorithms")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    amp: str = _f("none", "mixed precision", ("none", "bf16", "fp16"))
    channels_last: bool = _f(False, "channels-last memory format")
    compile: bool = _f(False, "torch.compile the model")
    sync_bn: bool = _f(False, "SyncBatchNorm across GPUs (distributed GPU runs only)")
    ema_decay: Optional[float] = _f(None, "keep an exponential moving average of the weights with this decay")
    eval_every: int = _f(1, "validate every N epochs (0: only at the end)")
    save_every: int = _f(1, "save a checkpoint every N epochs")
    save_every_steps: Optional[int] = _f(None, "also save last.pt every N steps")
    keep_checkpoint_max: int = _f(10, "epoch checkpoints to keep (last.pt and best.pt are kept apart)")
    max_steps: Optional[int] = _f(None, "end the run after this many steps in all, for a smoke run (the schedule "
                                        "spans them; it validates, saves and exports as at its end)")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    name: str = "custom"  # the preset it came from; names the run directory

    def __post_init__(self):
        self._sources: dict[str, str] = {}  # field -> where its value was set ("flag", a preset, ...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        config = cls()
        if isinstance(values.get("model"), dict) and "stem_stride" not in values["model"]:
            values = dict(values, model=dict(values["model"], stem_stride=2))  # saved before the option: stride 2
        config.update(values)
        return config

    def source_of(self, key: str) -> Optional[str]:
        """Where field ``key`` was set (a preset's path or name, ``"flag"``, ...); ``None`` for a default."""
        return self._sources.get(key)

    def given(self, section: str) -> set[str]:
        """The fields of ``section`` the user gave: flags, or keyword settings in Python (not a preset's)."""
        return {f.name for f in fields(getattr(self, section)) if self._sources.get(f.name) == "flag"}

    def update(self, values: dict, source: str = "config") -> None:
        """Set fields from ``{"section": {"field": value}}`` or flat ``{"field": value}``; unknown keys are errors."""
        for key, value in values.items():
            if key == "name":
                self.name = str(value)
            elif key in SECTIONS and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    self._set(key, sub_key, sub_value, source)
            elif key in FIELD_SECTION:
                self._set(FIELD_SECTION[key], key, value, source)
            else:
                raise UsageError(f"{source}: unknown setting {key!r}")

    def _set(self, section: str, key: str, value: Any, source: str) -> None:
        section_obj = getattr(self, section)
        if key not in {f.name for f in fields(section_obj)}:
            raise UsageError(f"{source}: unknown setting {section}.{key}")
        setattr(section_obj, key, coerce(section_obj, key, value, source))
        self._sources[key] = source


SECTIONS = ("model", "data", "optim", "run")  # the fields of Config that hold settings
FIELD_SECTION = {f.name: section for section in SECTIONS for f in fields(getattr(Config(), section))}


def section_fields():
    """(section name, dataclass field) for every setting, in declaration order."""
    config = Config()
    for section in SECTIONS:
        for f in fields(getattr(config, section)):
            yield section, f


def field_type(section_obj, name: str) -> type:
    """The base type of a field (``Optional[int]`` -> ``int``)."""
    hint = typing.get_type_hints(type(section_obj))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def coerce(section_obj, key: str, value: Any, source: str) -> Any:
    """Check a value's type and choices; YAML/CLI strings like '1e-4' become numbers."""
    meta = next(f for f in fields(section_obj) if f.name == key).metadata
    kind = field_type(section_obj, key)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and kind is not str):
        if typing.get_type_hints(type(section_obj))[key] is kind:  # not Optional
            raise SettingError(key, "cannot be empty", source)
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = str(value)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
        raise SettingError(key, f"must be {expected}, got {value!r}", source) from None
    if meta.get("choices") and value not in meta["choices"]:
        raise SettingError(key, f"must be one of {', '.join(map(str, meta['choices']))}, got {value!r}", source)
    return value


def _presets():
    """The preset folder shipped inside the package (package data, found the same way in a wheel)."""
    from importlib.resources import files

    return files("mobilenetv3") / "configs"


def list_presets() -> list[str]:
    return sorted(p.name[:-len(".yaml")] for p in _presets().iterdir() if p.name.endswith(".yaml"))


def load_config(preset: Optional[str] = None, overrides: Optional[dict] = None) -> Config:
    """Defaults, then a preset (a name from ``list_presets()`` or a YAML path), then ``overrides``."""
    config = Config()
    if preset:
        path = Path(preset)
        if not path.suffix:
            if preset not in list_presets():
                raise UsageError(f"unknown config {preset!r}; presets: {', '.join(list_presets())} (or a YAML path)")
            config.update(_parse_yaml((_presets() / f"{preset}.yaml").read_text(), preset), source=preset)
        else:
            if not path.is_file():
                raise UsageError(f"config file {path} does not exist")
            config.update(_parse_yaml(path.read_text(), str(path)), source=str(path))
        config.name = path.stem
    if overrides:
        base_epochs = config.optim.epochs
        config.update(overrides, source="flag")
        _scale_warmup(config, base_epochs)
    validate(config)
    return config


def _scale_warmup(config: Config, base_epochs: int) -> None:
    """A warmup the user did not give keeps its share of the run when the user changes only ``epochs``."""
    o = config.optim
    if config.source_of("epochs") != "flag" or config.source_of("warmup_epochs") == "flag" or \
            o.epochs == base_epochs or base_epochs < 1:
        return
    config._sources["warmup_epochs"] = f"warmup {o.warmup_epochs:g} of {base_epochs} epochs scaled to the run"
    o.warmup_epochs = o.warmup_epochs * o.epochs / base_epochs  # the run says so when it starts


def _parse_yaml(text: str, source: str) -> dict:
    import yaml

    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{source} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{source} must hold a mapping of settings")
    return values


def _resolve_stem_stride(config: Config) -> None:
    """No stride given: 1 for images of 32 px or less (their maps would halve before the first block), else 2."""
    m, d = config.model, config.data
    if m.stem_stride is None:
        m.stem_stride = 1 if d.image_size <= 32 else 2
        config._sources["stem_stride"] = f"the default for {d.image_size} px images"


def validate(config: Config) -> None:
    """Range checks that types alone do not catch; one ``SettingError`` for the first problem (it names the
    setting and where it was set; the CLI shows it as its flag). Settings whose default depends on others
    (``stem_stride``) are resolved here."""
    _resolve_stem_stride(config)
    m, d, o, r = config.model, config.data, config.optim, config.run
    checks = [  # (fine, the setting, what is wrong with it)
        (d.batch_size >= 1, "batch_size", f"must be at least 1, got {d.batch_size}"),
        (d.eval_batch_size is None or d.eval_batch_size >= 1, "eval_batch_size", "must be at least 1"),
        (d.image_size >= 16, "image_size", f"must be at least 16, got {d.image_size}"),
        (d.workers is None or d.workers >= 0, "workers", "must be 0 or more"),
        (0 <= d.random_erasing <= 1, "random_erasing", "must be a probability in [0, 1]"),
        (d.mixup_alpha >= 0, "mixup_alpha", "must be 0 or more"),
        (d.cutmix_alpha >= 0, "cutmix_alpha", "must be 0 or more"),
        (d.synthetic_samples >= 1, "synthetic_samples", "must be at least 1"),
        (d.val_split >= 0, "val_split", f"must be 0 or more, got {d.val_split}"),
        (o.lr > 0, "lr", f"must be positive, got {o.lr}"),
        (o.lr_init >= 0, "lr_init", "must be 0 or more"),
        (o.lr_end >= 0, "lr_end", "must be 0 or more"),
        (o.epochs >= 1, "epochs", f"must be at least 1, got {o.epochs}"),
        (o.warmup_epochs >= 0, "warmup_epochs", f"must be 0 or more, got {o.warmup_epochs}"),
        (0 <= o.momentum < 1, "momentum", f"must be in [0, 1), got {o.momentum}"),
        (not o.nesterov or (o.optimizer == "sgd" and o.momentum > 0), "nesterov",
         f"needs the sgd optimizer with momentum above 0 (got {o.optimizer}, momentum {o.momentum})"),
        (o.weight_decay >= 0, "weight_decay", f"must be 0 or more, got {o.weight_decay}"),
        (0 <= o.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {o.label_smoothing}"),
        (o.grad_clip is None or o.grad_clip > 0, "grad_clip", "must be positive"),
        (o.lr_reference_batch is None or o.lr_reference_batch >= 1, "lr_reference_batch", "must be at least 1"),
        (r.ema_decay is None or 0 < r.ema_decay < 1, "ema_decay", f"must be in (0, 1), got {r.ema_decay}"),
        (r.eval_every >= 0, "eval_every", "must be 0 or more"),
        (r.save_every >= 1, "save_every", "must be at least 1"),
        (r.save_every_steps is None or r.save_every_steps >= 1, "save_every_steps", "must be at least 1"),
        (r.keep_checkpoint_max >= 1, "keep_checkpoint_max", "must be at least 1"),
        (r.max_steps is None or r.max_steps >= 1, "max_steps", f"must be at least 1, got {r.max_steps}"),
        (m.num_classes is None or m.num_classes >= 1, "num_classes", f"must be at least 1, got {m.num_classes}"),
    ]
    for fine, key, problem in checks:
        if not fine:
            raise SettingError(key, problem, config.source_of(key))


def apply_over_run(config: Config, settings: dict) -> None:
    """Apply ``settings`` given now (flags) over ``config``, a saved run's. A ``dataset`` other than the run's
    does not keep the run's ``data_path``, which was the other dataset's folder: that dataset's default is used
    unless ``data_path`` is given too."""
    if settings.get("dataset") not in (None, config.data.dataset) and "data_path" not in settings:
        config.data.data_path = None
    config.update(settings, source="flag")


def replace(config: Config, **sections: dict) -> Config:
    """A copy with some fields changed: ``replace(cfg, optim=dict(epochs=2))`` (or flat: ``epochs=2``)."""
    copy = Config.from_dict(config.to_dict())
    copy._sources = dict(config._sources)
    copy.update(sections, source="flag")
    return copy

