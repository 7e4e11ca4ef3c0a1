"""torch.hub entry points: ``torch.hub.load(REPO_DIR, "mobilenetv3_large", source="local", num_classes=10)``.

``weights=PATH`` loads a local checkpoint in any format the project reads (ours, safetensors,
torchvision/timm state dicts, MindSpore .ckpt). ``create_network`` is the seed's
``mindspore_hub_conf.py`` entry point with its argument names.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

dependencies = ["torch", "torchvision"]

from mobilenetv3.models import create_model  # noqa: E402
from mobilenetv3.weights import load_model  # noqa: E402


def _build(name: str, weights=None, **kwargs):
    if weights is None:
        return create_model(name, **kwargs)
    model = load_model(weights, **kwargs)
    if model.model_name != name:
        raise ValueError(f"{weights} holds {model.model_name} weights, not {name}")
    return model


def mobilenetv3_large(weights=None, **kwargs):
    """MobileNetV3-Large; ``weights=PATH`` loads a local checkpoint (returned in eval mode)."""
    return _build("mobilenetv3_large", weights, **kwargs)


def mobilenetv3_small(weights=None, **kwargs):
    """MobileNetV3-Small; ``weights=PATH`` loads a local checkpoint (returned in eval mode)."""
    return _build("mobilenetv3_small", weights, **kwargs)


_SEED_ARGS = {"multiplier": "width_mult", "final_drop": "dropout"}


def create_network(name, *args, **kwargs):
    """The seed's hub function: ``create_network("mobilenetv3_large", num_classes=1000, multiplier=1.0)``.

    Positional arguments are the seed's ``(num_classes, multiplier)``; the seed's network has no
    dropout unless ``final_drop`` is given, and a 1280-wide head for Small too.
    """
    if name not in ("mobilenetv3_large", "mobilenetv3_small"):
        raise ValueError(f"unknown network {name!r}; choose mobilenetv3_large or mobilenetv3_small")
    for value, key in zip(args, ("num_classes", "width_mult")):
        kwargs.setdefault(key, value)
    kwargs = {_SEED_ARGS.get(k, k): v for k, v in kwargs.items()}
    kwargs.setdefault("dropout", 0.0)
    kwargs.setdefault("head_channels", 1280)
    kwargs.setdefault("head_bias", False)  # the seed's head is a bias-free 1x1 conv
    return _build(name, **kwargs)
