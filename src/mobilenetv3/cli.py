"""The ``mobilenetv3`` command: argparse subcommands. The only module that reads argv or prints for users.

A user mistake (bad name, bad value, missing file) is one line on stderr and exit code 2; an
unexpected failure is one line and exit code 1 (set ``MOBILENETV3_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

PROG = "mobilenetv3"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the usage text stays behind ``--help``)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_info(args: argparse.Namespace) -> int:
    from .models import count_params, create_model, profile

    kwargs = {k: v for k, v in dict(num_classes=args.num_classes, width_mult=args.width_mult,
                                    head_channels=args.head_channels, in_chans=args.in_chans).items()
              if v is not None}
    model = create_model(args.model, **kwargs)
    if args.img_size < 32:
        raise UserError(f"--img-size must be at least 32, got {args.img_size}")
    rows = profile(model, args.img_size)
    params, madds = count_params(model), sum(r.madds for r in rows)
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    if args.json:
        print(json.dumps(dict(model=args.model, kwargs=model.model_kwargs, image_size=args.img_size,
                              params=params, bn_buffers=buffers, madds=madds,
                              rows=[r.__dict__ for r in rows]), indent=2))
        return 0
    print(f"{args.model}  " + ", ".join(f"{k}={v}" for k, v in model.model_kwargs.items()))
    print(f"params: {params:,} (+{buffers:,} BatchNorm running statistics)")
    print(f"MAdds:  {madds:,} ({madds / 1e6:.1f}M) at {args.img_size}x{args.img_size}, "
          "counting conv and linear multiply-accumulates only")
    print()
    header = f"{'layer':<11} {'input':>13} {'operator':<31} {'output':>13} {'params':>10} {'MAdds':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        shape_in, shape_out = "x".join(map(str, r.input_shape)), "x".join(map(str, r.output_shape))
        print(f"{r.name:<11} {shape_in:>13} {r.operator:<31} {shape_out:>13} {r.params:>10,} {r.madds:>12,}")
    return 0


def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameters, MAdds and the per-layer table of a model",
                              description="Print a model's parameter count, MAdds and its per-layer table.")
    p.add_argument("model", help="model name, e.g. mobilenetv3_large (see `mobilenetv3 info --list`)",
                   nargs="?")
    p.add_argument("--list", action="store_true", help="list the model names and exit")
    p.add_argument("--img-size", type=int, default=224, help="input resolution for MAdds (default 224)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default 1000)")
    p.add_argument("--width-mult", type=float, help="width multiplier (default 1.0)")
    p.add_argument("--head-channels", type=int, help="hidden head width (default 1280 Large, 1024 Small)")
    p.add_argument("--in-chans", type=int, help="input channels (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=_cmd_info_or_list)


def _cmd_info_or_list(args: argparse.Namespace) -> int:
    from .models import list_models

    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.model is None:
        raise UserError(f"name a model: one of {', '.join(list_models())}")
    return _cmd_info(args)


def _add_config_flags(p: argparse.ArgumentParser, sections: Sequence[str], only: Sequence[str] = ()) -> None:
    """One flag per config field of ``sections`` (plus the named fields ``only``), defaults suppressed so
    that only the flags given override the preset."""
    from .config import Config, field_type, section_fields

    defaults = Config()
    for section, f in section_fields():
        if section not in sections and f.name not in only:
            continue
        kind = field_type(getattr(defaults, section), f.name)
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + (f" ({', '.join(choices)})" if choices else "")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                           help=help_text)


def _overrides(args: argparse.Namespace, exclude: Sequence[str] = ()) -> dict:
    """The config fields given on the command line."""
    from .config import FIELD_SECTION

    return {k: v for k, v in vars(args).items() if k in FIELD_SECTION and k not in exclude}


def _add_train(subparsers) -> None:
    from .config import list_presets

    p = subparsers.add_parser(
        "train", help="train a model (the seed's recipe, resume, torchrun)",
        description="Train a MobileNetV3. Settings come from the defaults, then --config, then the flags given.",
        epilog=f"presets: {', '.join(list_presets())}. Several processes: torchrun --nproc_per_node=N -m "
               "mobilenetv3 train ...")
    p.add_argument("--config", help="a preset name or a YAML file")
    _add_config_flags(p, ("model", "data", "optim", "run"))
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine import NonFiniteLoss
    from .runner import RunError, prepare_config, train

    config = prepare_config(args.config, _overrides(args))
    try:
        result = train(config)
    except (NonFiniteLoss, RunError) as err:
        print(f"{PROG} train: failed: {_one_line(err)}", file=sys.stderr)
        return 1
    if result["stopped"]:
        print(f"stopped at epoch {result['epoch'] + 1}, step {result['step_in_epoch']}; checkpoint saved: "
              f"{result['checkpoint']}")
        print(f"resume with: {PROG} train --resume auto --run-dir {result['run_dir']}")
        return 0
    if result["top1"] is not None:
        print(f"final accuracy: top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}% "
              f"on {result['val_count']} validation images")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"log: {result['log']}")
    print(f"run directory: {result['run_dir']} ({result['time'] / 60:.1f} min)")
    return 0


# ------------------------------------------------------------------------------------------- eval
PREPROCESSING_FLAGS = ("transform", "image_size", "eval_resize", "interpolation")


def _base_config(weights_checkpoint: Optional[dict]):
    """The training run's config when the weights come from our checkpoint, else the defaults."""
    from .config import Config

    saved = (weights_checkpoint or {}).get("config")
    return Config.from_dict(saved) if saved else Config()


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 over every sample",
                              description="Score a checkpoint (any format) or an exported ONNX model on a dataset's "
                                          "validation split, every sample exactly once; writes a JSON report and the "
                                          "confusion matrix. Runs under torchrun too.")
    p.add_argument("--checkpoint", help="weights: ours, safetensors, torchvision/timm state dict, MindSpore .ckpt")
    p.add_argument("--onnx", help="evaluate this exported ONNX model with ONNX Runtime instead")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--out", help="report folder (default: eval-<dataset> beside the weights)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_config_flags(p, ("data",), only=("device", "seed"))
    p.set_defaults(handler=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import read_weights
    from .runner import run_eval

    if not args.checkpoint and not args.onnx:
        raise UserError("give --checkpoint PATH (or --onnx FILE)")
    base = _base_config(read_weights(args.checkpoint, ema=args.ema).checkpoint) if args.checkpoint else None
    config = _eval_config(base, args)
    preprocessing = None
    if any(flag in vars(args) for flag in PREPROCESSING_FLAGS):  # the user asked for another protocol
        from .data import STATS, build_preset

        d = config.data
        in_chans = _model_in_chans(args)
        preprocessing = build_preset(d.transform, d.image_size, *STATS[d.dataset], in_chans,
                                     eval_resize=d.eval_resize, interpolation=d.interpolation)[1]
    result = run_eval(config, args.checkpoint, ema=args.ema, onnx=args.onnx, preprocessing=preprocessing,
                      out_dir=args.out)
    if result is None:  # not the main process
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    print(f"scored {result['count']} of {result['dataset_size']} images, each once "
          f"({result['dataset']} {result['split']}, {result['runtime']}"
          + (f", {result['skipped']} unreadable skipped" if result["skipped"] else "") + ")")
    print(f"top-1 {100 * result['top1']:.2f}%  top-{result['topk']} {100 * result['top5']:.2f}%  "
          f"loss {result['loss']:.4f}")
    if len(result["classes"]) <= 20:
        for name, accuracy in zip(result["classes"], result["per_class_accuracy"]):
            print(f"  {name:<20} {100 * accuracy:6.2f}%")
    print(f"result: {{'acc': {result['top1']}, 'top5': {result['top5']}}} ckpt= {result['weights']}")
    print(f"report: {result['reports']['json']} (confusion matrix: {result['reports']['csv']}, "
          f"{result['reports']['png']})")
    return 0


def _eval_config(base, args: argparse.Namespace):
    from .config import Config, validate

    config = base or Config()
    config.update(_overrides(args), source="flag")
    validate(config)
    return config


def _model_in_chans(args: argparse.Namespace) -> int:
    if args.onnx:
        from .export import OnnxModule

        return OnnxModule(args.onnx).in_chans
    from .checkpoint import read_weights

    return int(read_weights(args.checkpoint).model_kwargs.get("in_chans", 3))


# ----------------------------------------------------------------------------------------- export
def _add_export(subparsers) -> None:
    from .export import FORMATS

    p = subparsers.add_parser("export", help="export to ONNX, TorchScript, torch.export or INT8 ONNX, verified",
                              description="Export weights and verify the file in its runtime against PyTorch.")
    p.add_argument("--checkpoint", required=True, help="weights in any format the project reads")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="output format (default onnx)")
    p.add_argument("--output", help="output file (default: beside the checkpoint)")
    p.add_argument("--softmax", action="store_true", help="append a softmax (the seed's export); default: logits")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--calibration-images", type=int, default=300, help="images to calibrate INT8 with")
    p.add_argument("--no-dataset", action="store_true", help="verify on random inputs only")
    _add_config_flags(p, (), only=("dataset", "data_path", "batch_size", "workers", "image_size"))
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import model_from_weights, read_weights
    from .data.transforms import Preprocessing
    from .export import SUFFIXES, export_verified

    weights = read_weights(args.checkpoint, ema=args.ema)
    model = model_from_weights(weights)
    pre = Preprocessing.from_dict(model.preprocessing)
    size = getattr(args, "image_size", None) or pre.crop
    source = Path(args.checkpoint)
    path = Path(args.output) if args.output else source.with_name(source.stem + SUFFIXES[args.format])
    config = _base_config(weights.checkpoint)
    config.update(_overrides(args), source="flag")
    has_data = not args.no_dataset and (config.data.dataset in ("fashion-mnist", "synthetic") or config.data.data_path)
    real, calibration, val = [], None, None
    if has_data:
        val, real, calibration = _export_data(config, model, pre, args)
    example = torch.randn(2, model.in_chans, size, size)
    result = export_verified(model, args.format, path, example, softmax=args.softmax, real_inputs=real,
                             calibration=calibration)
    print(f"exported {args.format}: {result['path']}")
    for name in ("random", "real"):
        if name in result:
            r = result[name]
            print(f"  {name} inputs ({r['compared']} images): max |difference| to PyTorch {r['max_abs_diff']:.2e}, "
                  f"top-1 agreement {100 * r['top1_agreement']:.2f}%")
    if args.format == "onnx-int8" and val is not None:
        _report_int8_accuracy(result, val, pre, config)
    return 0


def _export_data(config, model, pre, args):
    """A few real validation batches to verify on, and training images to calibrate INT8 with."""
    import itertools

    from .data import build_loader, check_labels
    from .data.transforms import Recipe
    from .runner import dataset_split

    d = config.data
    val = dataset_split(config, "val", model.num_classes)
    check_labels(val, model.num_classes)
    batch = min(d.batch_size, 64)
    loader = build_loader(val, Recipe(pre.crop), pre, train=False, batch_size=batch, workers=0)
    real = [b.images for b in itertools.islice(loader, 2)]
    calibration = None
    if args.format == "onnx-int8":
        train = dataset_split(config, "train", model.num_classes)
        loader = build_loader(train, Recipe(pre.crop), pre, train=False, batch_size=batch, workers=0)
        count = max(1, -(-args.calibration_images // batch))
        calibration = [b.images for b in itertools.islice(loader, count)]
    return val, real, calibration


def _report_int8_accuracy(result: dict, val, pre, config) -> None:
    from .data import build_loader
    from .data.transforms import Recipe
    from .engine import evaluate
    from .export import OnnxModule

    import torch

    scores = {}
    for name, path in (("fp32", result["fp32_path"]), ("int8", result["path"])):
        model = OnnxModule(path)
        loader = build_loader(val, Recipe(pre.crop), pre, train=False, batch_size=config.data.batch_size, workers=0)
        scores[name] = evaluate(model, loader, num_classes=model.num_classes, device=torch.device("cpu"))
    print(f"  accuracy on {config.data.dataset} val ({scores['int8']['count']} images): INT8 top-1 "
          f"{100 * scores['int8']['top1']:.2f}%, fp32 top-1 {100 * scores['fp32']['top1']:.2f}%")


# ---------------------------------------------------------------------------------------- predict
def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify images with a checkpoint or an exported model",
                              description="Top-k classes for image files, folders or globs.")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", help="weights in any format the project reads")
    p.add_argument("--onnx", help="an exported ONNX model instead of --checkpoint")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data.transforms import Preprocessing
    from .export import OnnxModule
    from .predict import expand_inputs, predict

    if bool(args.checkpoint) == bool(args.onnx):
        raise UserError("give exactly one of --checkpoint PATH or --onnx FILE")
    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be at least 1")
    paths = expand_inputs(args.images)
    model = OnnxModule(args.onnx) if args.onnx else load_model(args.checkpoint)
    if not model.preprocessing:
        raise UserError(f"{args.onnx} carries no preprocessing metadata (export it with `{PROG} export`)")
    results = predict(model, paths, Preprocessing.from_dict(model.preprocessing), model.classes, args.topk,
                      args.batch_size, outputs_probabilities=getattr(model, "softmax", False))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = min(60, max(len(r["path"]) for r in results))
    for r in results:
        top = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        print(f"{r['path']:<{width}}  {top}")
    return 0


# ---------------------------------------------------------------------------------------- convert
CONVERT_FORMATS = ("mindspore", "mobilenetv3", "safetensors", "torchvision", "timm")
_SUFFIX_FORMATS = {".ckpt": "mindspore", ".safetensors": "safetensors", ".pt": "mobilenetv3"}


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert weights between MindSpore .ckpt, torchvision, timm and ours",
                              description="Convert MobileNetV3 weights between formats. The source format is "
                                          "detected from the file; the target from DST's extension or --to "
                                          "(.ckpt MindSpore, .pt ours, .safetensors; .pth needs --to).")
    p.add_argument("src", help="source weights")
    p.add_argument("dst", help="output file")
    p.add_argument("--to", choices=CONVERT_FORMATS, help="target format when DST's extension does not say")
    p.add_argument("--from", dest="from_format", choices=CONVERT_FORMATS, help="(detected; checked if given)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    p.set_defaults(handler=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import read_weights, write_weights

    target = args.to or _SUFFIX_FORMATS.get(Path(args.dst).suffix)
    if target is None:
        raise UserError(f"cannot tell the format of {args.dst} from its extension; add --to "
                        f"({', '.join(CONVERT_FORMATS)})")
    if Path(args.dst).resolve() == Path(args.src).resolve():
        raise UserError("SRC and DST are the same file")
    weights = read_weights(args.src, ema=args.ema)
    source_format = "mobilenetv3" if weights.source in ("mobilenetv3", "safetensors") and \
        Path(args.src).suffix != ".safetensors" else weights.source
    if args.from_format and args.from_format != source_format:
        raise UserError(f"{args.src} holds {source_format} weights, not {args.from_format}")
    write_weights(weights, Path(args.dst), target)
    print(f"{args.src} ({source_format}, {weights.model_name}, "
          + ", ".join(f"{k}={v}" for k, v in weights.model_kwargs.items() if k in ("num_classes", "width_mult",
                                                                                 "head_channels"))
          + f") -> {args.dst} ({target})")
    return 0


# ------------------------------------------------------------------------------------------ bench
def _add_bench(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark latency and throughput against torchvision",
                              description="Time our inference paths or training step next to torchvision's in the "
                                          "same run; prints ratios (>1: faster than torchvision). The full suite is "
                                          "benchmarks/run_all.sh.")
    p.add_argument("what", choices=("inference", "training"), help="what to time")
    p.add_argument("--model", nargs="+", default=["mobilenetv3_large"], help="models (default mobilenetv3_large)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: 1 and 32 for inference, 32 for "
                                                        "training)")
    p.add_argument("--size", type=int, help="image size (default 224)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and no torch.compile")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_rows, run_bench
    from .models import list_models

    for name in args.model:
        if name not in list_models():
            raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    batches = args.batch or ([1, 32] if args.what == "inference" else [32])
    size = args.size or 224
    if min(batches) < 1 or size < 32:
        raise UserError("--batch must be at least 1 and --size at least 32")
    result = run_bench(args.what, args.model, batches, size, args.quick, Path(args.out) if args.out else None)
    machine = result["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} ({machine['torch_threads']} threads)"
          + (f", onnxruntime {machine['onnxruntime']}" if "onnxruntime" in machine else ""))
    key = "speedup_vs_torchvision_eager" if args.what == "inference" else "speedup_vs_torchvision_loop"
    print(format_rows(result["rows"], key))
    print("ratio: torchvision's time over ours (above 1: faster than torchvision)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Train, evaluate, export and serve MobileNetV3 image classifiers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_export(subparsers)
    _add_predict(subparsers)
    _add_convert(subparsers)
    _add_bench(subparsers)
    _add_info(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        return args.handler(args)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: one line instead of a traceback
        if os.environ.get("MOBILENETV3_DEBUG"):
            raise
        print(f"{PROG} {args.command}: failed: {type(err).__name__}: {_one_line(err)} "
              "(set MOBILENETV3_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (main() may run many times in one process)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr() -> None:
    """The package's INFO messages on stderr (rank 0's only under torchrun); other libraries stay at WARNING."""
    package = logging.getLogger("mobilenetv3")
    if not any(isinstance(h, _StderrHandler) for h in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
