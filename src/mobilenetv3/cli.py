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
from typing import Optional, Sequence

PROG = "mobilenetv3"
EXIT_USER_ERROR = 2

# Subcommands that later work fills in; until then they say so in one line.
PLANNED = {
    "eval": "evaluate a checkpoint: top-1/top-5 over every sample",
    "export": "export to ONNX, TorchScript, torch.export or INT8 ONNX, verified",
    "predict": "classify images with a checkpoint or an exported model",
    "convert": "convert weights between MindSpore .ckpt, torchvision, timm and ours",
    "bench": "benchmark latency and throughput against torchvision",
}


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


def _add_train(subparsers) -> None:
    from .config import Config, field_type, list_presets, section_fields

    p = subparsers.add_parser(
        "train", help="train a model (the seed's recipe, resume, torchrun)",
        description="Train a MobileNetV3. Settings come from the defaults, then --config, then the flags given.",
        epilog=f"presets: {', '.join(list_presets())}. Several processes: torchrun --nproc_per_node=N -m "
               "mobilenetv3 train ...")
    p.add_argument("--config", help="a preset name or a YAML file")
    defaults = Config()
    for section, f in section_fields():
        kind = field_type(getattr(defaults, section), f.name)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"] + (f" ({', '.join(f.metadata['choices'])})" if f.metadata.get("choices") else "")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                           help=help_text)
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine import NonFiniteLoss
    from .runner import RunError, prepare_config, train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config = prepare_config(args.config, overrides)
    try:
        result = train(config)
    except (NonFiniteLoss, RunError) as err:
        print(f"{PROG} train: failed: {_one_line(err)}", file=sys.stderr)
        return 1
    if result is None:  # not the main process
        return 0
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


def _cmd_planned(args: argparse.Namespace) -> int:
    print(f"{PROG} {args.command}: not available yet in this version", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Train, evaluate, export and serve MobileNetV3 image classifiers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in PLANNED.items():
        subparsers.add_parser(name, help=help_text, description=help_text).set_defaults(handler=_cmd_planned)
    _add_train(subparsers)
    _add_info(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
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


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
