"""The ``mobilenetv3`` command: argparse subcommands. The only module that reads argv or prints for users.

Each subcommand parses its flags, calls one task (``mobilenetv3.tasks``) and prints the result. A user
mistake (``UsageError``, a missing file) is one line on stderr and exit code 2; any other failure is one
line and exit code 1. ``MOBILENETV3_DEBUG=1`` shows the traceback of both.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import RunError, SettingError, UsageError

PROG = "mobilenetv3"
EXIT_USER_ERROR = 2
USER_ERRORS = (UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the usage text stays behind ``--help``), and no flag
    is taken from a prefix of its name (``--epoch`` is not ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines end in their default, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        if action.default is True:
            return f"{action.help} (default: on)"
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------------- info
def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameters, MAdds and the per-layer table of a model",
                              description="Print a model's parameter count, MAdds and its per-layer table.")
    p.add_argument("model", help="model name, e.g. mobilenetv3_large (see `mobilenetv3 info --list`)",
                   nargs="?")
    p.add_argument("--list", action="store_true", help="list the model names and exit")
    _add_image_size(p, "input resolution for MAdds (default 224)", default=224)
    p.add_argument("--num-classes", type=int, help="classifier outputs (default 1000)")
    p.add_argument("--width-mult", type=float, help="width multiplier (default 1.0)")
    p.add_argument("--head-channels", type=int, help="hidden head width (default 1280 Large, 1024 Small)")
    p.add_argument("--in-chans", type=int, help="input channels (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .models import list_models
    from .tasks import model_info

    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.model is None:
        raise UsageError(f"name a model: one of {', '.join(list_models())}")
    kwargs = {k: v for k, v in dict(num_classes=args.num_classes, width_mult=args.width_mult,
                                    head_channels=args.head_channels, in_chans=args.in_chans).items()
              if v is not None}
    info = model_info(args.model, args.image_size, **kwargs)
    if args.json:
        print(json.dumps(dict(model=info.model, kwargs=info.kwargs, image_size=info.image_size, params=info.params,
                              bn_buffers=info.bn_buffers, madds=info.madds, rows=[r.__dict__ for r in info.rows]),
                         indent=2))
        return 0
    print(f"{info.model}  " + ", ".join(f"{k}={v}" for k, v in info.kwargs.items()))
    print(f"params: {info.params:,} (+{info.bn_buffers:,} BatchNorm running statistics)")
    print(f"MAdds:  {info.madds:,} ({info.madds / 1e6:.1f}M) at {info.image_size}x{info.image_size}, "
          "counting conv and linear multiply-accumulates only")
    print()
    header = f"{'layer':<11} {'input':>13} {'operator':<31} {'output':>13} {'params':>10} {'MAdds':>12}"
    print(header)
    print("-" * len(header))
    for r in info.rows:
        shape_in, shape_out = "x".join(map(str, r.input_shape)), "x".join(map(str, r.output_shape))
        print(f"{r.name:<11} {shape_in:>13} {r.operator:<31} {shape_out:>13} {r.params:>10,} {r.madds:>12,}")
    return 0


# ----------------------------------------------------------------------------------------- flags
def _add_image_size(p: argparse.ArgumentParser, help_text: str, **kwargs) -> None:
    """``--image-size``, the one spelling; ``--img-size`` and ``--size`` are hidden aliases for one release."""
    p.add_argument("--image-size", type=int, help=help_text, **kwargs)
    for old in ("--img-size", "--size"):
        p.add_argument(old, dest="image_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_config_flags(p: argparse.ArgumentParser, sections: Sequence[str], only: Sequence[str] = (),
                      show_defaults: bool = True) -> None:
    """One flag per config field of ``sections`` (plus the named fields ``only``), defaults suppressed so
    that only the flags given override the preset; the help shows each field's default."""
    from .config import Config, field_type, section_fields

    defaults = Config()
    for section, f in section_fields():
        if section not in sections and f.name not in only:
            continue
        kind = field_type(getattr(defaults, section), f.name)
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + (f" ({', '.join(map(str, choices))})" if choices else "")
        default = getattr(getattr(defaults, section), f.name)
        if show_defaults and default is not None and "default" not in help_text:
            help_text += f" (default: {('on' if default else 'off') if kind is bool else default})"
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                           help=help_text)


def _overrides(args: argparse.Namespace) -> dict:
    """The config fields given on the command line."""
    from .config import FIELD_SECTION

    return {k: v for k, v in vars(args).items() if k in FIELD_SECTION}


# ------------------------------------------------------------------------------------------ train
def _add_train(subparsers) -> None:
    from .config import list_presets

    p = subparsers.add_parser(
        "train", help="train a model (the seed's recipe, resume, torchrun)",
        description="Train a MobileNetV3. Settings come from the defaults (the embedded default recipe: "
                    "MobileNetV3-Small on Fashion-MNIST at 28 px with a stride-1 stem, 3 epochs), then --config, "
                    "then the flags given.",
        epilog=f"presets: {', '.join(list_presets())}. Several processes: torchrun --nproc_per_node=N -m "
               "mobilenetv3 train ...")
    p.add_argument("--config", help="a preset name or a YAML file")
    _add_config_flags(p, ("model", "data", "optim", "run"))
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .tasks import train

    result = train(args.config, **_overrides(args))
    if result.stopped:
        print(f"stopped at epoch {result.epoch + 1}, step {result.step_in_epoch}; checkpoint saved: "
              f"{result.checkpoint}")
        print(f"resume with: {PROG} train --resume auto --run-dir {result.run_dir}")
        return 0
    if result.top1 is not None:
        print(f"final accuracy: top-1 {100 * result.top1:.2f}%, top-5 {100 * result.top5:.2f}% "
              f"on {result.val_count} validation images")
    if result.test_top1 is not None:
        print(f"test split (scored once, at the end): top-1 {100 * result.test_top1:.2f}%, "
              f"top-5 {100 * result.test_top5:.2f}% on {result.test_count} images")
    print(f"checkpoint: {result.checkpoint}")
    print(f"log: {result.log}")
    print(f"run directory: {result.run_dir} ({result.time / 60:.1f} min)")
    return 0


# ------------------------------------------------------------------------------------------- eval
def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 over every sample",
                              description="Score a checkpoint (any format) or an exported model (ONNX, OpenVINO IR, "
                                          "ExecuTorch .pte) on a dataset's validation split, every sample exactly "
                                          "once; writes a JSON report and the confusion matrix. Runs under torchrun "
                                          "too. The dataset settings default to those of the run that trained the "
                                          "checkpoint.")
    p.add_argument("--checkpoint", help="weights: ours, safetensors, torchvision/timm state dict, MindSpore .ckpt")
    _add_exported_flags(p, "evaluate")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--by-index", action="store_true",
                   help="score dataset label i as the model's class i even when the classes do not match")
    p.add_argument("--out", help="report folder (default: eval-<dataset>-<file name> beside the file scored)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_config_flags(p, (), only=EVAL_FIELDS, show_defaults=False)
    p.set_defaults(handler=_cmd_eval)


def _add_exported_flags(p: argparse.ArgumentParser, verb: str) -> None:
    """--exported/--onnx, --runtime and --precision: an exported file and what runs it (eval, predict)."""
    from .export import PRECISIONS, RUNTIMES

    p.add_argument("--exported", metavar="FILE",
                   help=f"{verb} an exported model instead: .onnx (ONNX Runtime), an OpenVINO IR .xml (OpenVINO), "
                        "an ExecuTorch .pte (ExecuTorch), a LiteRT .tflite (LiteRT), an .ncnn.param (ncnn), a Core ML "
                        ".mlpackage (Core ML, macOS only), a .torchscript.pt or a .pt2 (PyTorch)")
    p.add_argument("--onnx", metavar="FILE", help="the same as --exported, for an .onnx file")
    p.add_argument("--runtime", choices=RUNTIMES,
                   help="what runs the exported file (default: its own; openvino also runs .onnx files)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="OpenVINO's precision (default fp32; bf16 needs a CPU with native bf16)")


def _model_file(args: argparse.Namespace) -> Optional[str]:
    """The one model file given: ``--checkpoint`` (weights, not an exported file) or ``--exported`` (``--onnx``)."""
    from .export import exported_kind, open_exported
    from .weights import read_weights

    exported = args.exported or args.onnx
    if args.exported and args.onnx:
        raise UsageError("give --exported FILE or --onnx FILE, not both")
    if args.checkpoint and exported:
        raise UsageError("give exactly one of --checkpoint PATH or --exported FILE (--onnx FILE)")
    if args.checkpoint and exported_kind(Path(args.checkpoint)):
        read_weights(args.checkpoint)  # an exported file given as weights: its one line ("... not weights")
    if exported and not exported_kind(Path(exported)):
        open_exported(exported)  # not an exported file: its one line, naming the kinds there are
    return args.checkpoint or exported


# What evaluation reads of the config: the data and its eval protocol, never the training augmentation.
EVAL_FIELDS = ("dataset", "data_path", "download", "transform", "image_size", "eval_resize", "interpolation",
               "batch_size", "eval_batch_size", "workers", "skip_bad_images", "synthetic_samples", "device", "seed")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .tasks import evaluate, write_report

    source = _model_file(args)
    if not source:
        raise UsageError("give --checkpoint PATH (or --exported FILE)")
    result = evaluate(source, runtime=args.runtime, precision=args.precision, ema=args.ema, out_dir=args.out,
                      by_index=args.by_index, report=False, **_overrides(args))
    if result is None:  # not the main process
        return 0
    if args.json:
        try:
            write_report(result)
        finally:  # the metrics, even when the report cannot be written
            print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"scored {result.count} of {result.dataset_size} images, each once "
          f"({result.dataset} {result.split}, {result.runtime} {result.precision}, "
          f"{result.skipped} unreadable skipped)")
    p = result.preprocessing
    print(f"preprocessing: {result.preprocessing_source}: resize {p['resize']}, crop {p['crop']}, "
          f"{p['interpolation']}, mean {tuple(round(v, 4) for v in p['mean'])}, "
          f"std {tuple(round(v, 4) for v in p['std'])}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"top-1 {100 * result.top1:.2f}%  top-{result.topk} {100 * result.top5:.2f}%  loss {result.loss:.4f}")
    if len(result.classes) <= 20:
        for name, accuracy in zip(result.classes, result.per_class_accuracy):
            print(f"  {name:<20} {100 * accuracy:6.2f}%")
    print(f"result: {{'acc': {result.top1}, 'top5': {result.top5}}} ckpt= {result.weights}", flush=True)
    reports = write_report(result)  # after the metrics: an unwritable folder must not cost them
    print(f"report: {reports['json']} (confusion matrix: {reports['csv']}, {reports['png']})")
    return 0


# ----------------------------------------------------------------------------------------- export
def _add_export(subparsers) -> None:
    from .export import (
        ACTIVATION_RANGES,
        DEFAULT_KEEP_FP32,
        DEFAULT_VALIDATION_IMAGES,
        FORMATS,
        KEEP_FP32,
        OVERFLOW_FIX,
    )

    p = subparsers.add_parser("export", help="export to ONNX, OpenVINO, ExecuTorch, LiteRT, Core ML, ncnn, "
                                             "TorchScript or torch.export (INT8: ONNX, OpenVINO, ExecuTorch, "
                                             "LiteRT), verified",
                              description="Export weights and verify the file in its runtime against PyTorch.")
    p.add_argument("--checkpoint", required=True, help="weights in any format the project reads")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="output format (default onnx)")
    p.add_argument("--output", help="output file (default: beside the checkpoint)")
    p.add_argument("--softmax", action="store_true", help="append a softmax (the seed's export); default: logits")
    p.add_argument("--precision", choices=("fp16", "fp32"), help="coreml: what the program computes in (default fp16)")
    p.add_argument("--nhwc", action="store_true", help="litert: the file takes (N, H, W, C) images, as camera frames "
                                                       "are laid out (default: (N, C, H, W))")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--calibration-images", type=int, default=300,
                   help="training images to calibrate INT8 with, drawn at random (default 300)")
    p.add_argument("--verify-images", type=int, default=128,
                   help="validation images to verify on, drawn at random (default 128; 0: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed that draws those images (default 0)")
    p.add_argument("--no-dataset", action="store_true", help="verify on random inputs only")
    p.add_argument("--keep-fp32", metavar="KINDS", type=_kinds,
                   help=f"openvino-int8: layer kinds left in fp32, comma-separated, of {', '.join(KEEP_FP32)}; "
                        f"none for all in INT8 (default {','.join(DEFAULT_KEEP_FP32)})")
    p.add_argument("--int8-overflow-fix", choices=OVERFLOW_FIX,
                   help="openvino-int8: layers whose weights NNCF quantises to 7 bits, so that CPUs without VNNI do "
                        "not saturate (default enable: all)")
    p.add_argument("--int8-ranges", choices=ACTIVATION_RANGES,
                   help="openvino-int8: how activation ranges are set from the calibration images (default histogram)")
    p.add_argument("--int8-max-drop", type=float, metavar="FRACTION",
                   help="openvino-int8 accuracy control: layers are put back in fp32 until INT8's top-1 answer differs "
                        "from fp32's on at most this fraction of the validation images, e.g. 0.005 (default: off)")
    p.add_argument("--int8-validation-images", type=int, metavar="N",
                   help=f"with --int8-max-drop: training images it validates on, drawn at random from those the run "
                        f"held out (--val-split) less the calibration images, else from all training images less "
                        f"those (default {DEFAULT_VALIDATION_IMAGES})")
    _add_config_flags(p, (), only=("dataset", "data_path", "batch_size", "workers", "image_size"))
    p.set_defaults(handler=_cmd_export)


def _print_coreml(summary: dict) -> None:
    """What was checked of a Core ML package: it cannot predict off macOS."""
    image = summary["input"]
    print(f"  checked without Core ML (it predicts only on macOS): {summary['kind']} in {summary['precision']}, "
          f"input {image['name']} {image['width']}x{image['height']} {image['color']} (scale {image['scale']:.6g}, "
          f"bias {', '.join(f'{b:.6g}' for b in image['bias'])}), {len(summary['classes'])} class labels")
    print(f"  operators: {', '.join(f'{name} {count}' for name, count in summary['ops'].items())}")


def _kinds(text: str) -> tuple:
    """``se,classifier`` -> ``("se", "classifier")``; ``none`` -> ``()``."""
    return () if text.strip() == "none" else tuple(kind.strip() for kind in text.split(",") if kind.strip())


def _cmd_export(args: argparse.Namespace) -> int:
    from .tasks import export_model

    result = export_model(source=args.checkpoint, format=args.format, output=args.output, softmax=args.softmax,
                          ema=args.ema, calibration_images=args.calibration_images, verify_images=args.verify_images,
                          sample_seed=args.sample_seed, use_dataset=not args.no_dataset, keep_fp32=args.keep_fp32,
                          int8_overflow_fix=args.int8_overflow_fix, int8_ranges=args.int8_ranges,
                          int8_max_drop=args.int8_max_drop, int8_validation_images=args.int8_validation_images,
                          precision=args.precision, nhwc=args.nhwc,
                          **_overrides(args))
    print(f"exported {result.format}: {result.path}")
    if result.calibration_sample:
        print(f"  calibrated on {result.calibration_sample.describe()}")
    if result.int8:
        _print_int8(result.int8, result.validation_sample)
    checks = [("random", result.random, f"{result.random['compared']} images")] if result.random else []
    if result.real:
        checks.append(("real", result.real, result.real_sample.describe()))
    for name, figures, images in checks:
        print(f"  {name} inputs ({images}): max |difference| to PyTorch "
              f"{figures['max_abs_diff']:.2e}, top-1 agreement {100 * figures['top1_agreement']:.2f}%")
    if result.fp16:
        print(f"  in ncnn's default fp16 storage ({result.fp16['compared']:,} images): max |difference| to PyTorch "
              f"{result.fp16['max_abs_diff']:.2e}, top-1 agreement {100 * result.fp16['top1_agreement']:.2f}%")
    if result.operators:
        print(f"  operators: {', '.join(f'{name} {count}' for name, count in result.operators.items())}")
    if result.coreml:
        _print_coreml(result.coreml)
    if result.delegation:
        print(f"  {_delegation_line(result.delegation)}")
    if result.accuracy:
        a = result.accuracy
        print(f"  accuracy on {a['dataset']} val ({a['count']} images): INT8 top-1 {100 * a['int8_top1']:.2f}%, "
              f"fp32 top-1 {100 * a['fp32_top1']:.2f}%, same top-1 answer on {100 * a['agreement']:.2f}%")
    print(f"  {_dataset_line(result.dataset)}")
    return 0


def _dataset_line(record) -> str:
    """What an exported file records of the data its model was trained on (eval --exported's default dataset)."""
    if not record:
        return "records no training data (the weights carry no training config): eval it with --dataset"
    where = f" at {record['data_path']}" if record.get("data_path") else ""
    classes = f", {len(record['classes'])} classes" if record.get("classes") else ""
    return f"records its training data: {record['dataset']}{where}{classes}"


def _delegation_line(counts: dict) -> str:
    """``XNNPACK runs 184 of 184 operators (1 delegated subgraph)``, and the kinds left to the portable runtime."""
    total = counts["xnnpack"] + counts["portable"]
    subgraphs = counts["subgraphs"]
    line = (f"XNNPACK runs {counts['xnnpack']} of {total} operators ({subgraphs} delegated "
            f"subgraph{'s' if subgraphs != 1 else ''})")
    if counts["portable"]:
        line += "; portable runtime: " + ", ".join(f"{op} x{n}" for op, n in counts["portable_ops"].items())
    return line


def _print_int8(info: dict, validation_sample) -> None:
    """How an OpenVINO INT8 IR was quantised: its layers' precisions, and what accuracy control reached."""
    print(f"  {info['int8_layers']} layers in INT8, {len(info['fp32_layers'])} in fp32 (overflow fix "
          f"{info['overflow_fix']}, {info['activation_ranges']} activation ranges)")
    control = info.get("accuracy_control")
    if control:
        print(f"  accuracy control: INT8 gives fp32's top-1 answer on {100 * control['agreement']:.2f}% of "
              f"{validation_sample.describe()} (asked: at least {100 * (1 - control['max_drop']):.2f}%)")


# ---------------------------------------------------------------------------------------- predict
def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify images with a checkpoint or an exported model",
                              description="Top-k classes for image files, folders or globs.")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", help="weights in any format the project reads")
    _add_exported_flags(p, "classify with")
    p.add_argument("--topk", type=int, help="classes per image (default 5, or all when there are fewer)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out unreadable images (named in one line) instead of stopping at the first")
    p.add_argument("--classes", metavar="NAMES",
                   help="class names to show instead of the file's: a text file of one name per line, or a,b,c; "
                        "refused unless they are the model's classes (their count, and their names where the file "
                        "has real ones)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .tasks import predict

    source = _model_file(args)
    if not source:
        raise UsageError("give exactly one of --checkpoint PATH or --exported FILE (--onnx FILE)")
    results = predict(args.images, source=source, runtime=args.runtime, precision=args.precision, topk=args.topk,
                      batch_size=args.batch_size, skip_bad_images=args.skip_bad_images, classes=args.classes)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    print(f"model: {source} ({results[0].runtime} {results[0].precision})")
    width = min(60, max(len(r.path) for r in results))
    for r in results:
        top = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r.top)
        print(f"{r.path:<{width}}  {top}")
    return 0


# ------------------------------------------------------------------------------------------ serve
def _add_serve(subparsers) -> None:
    from .server import RUNTIMES
    from .server.uploads import MAX_PIXELS

    p = subparsers.add_parser("serve", help="serve a model over HTTP: KServe v2, /predict, /metrics, a web page",
                              description="Serve a model over HTTP with dynamic batching: the Open Inference "
                                          "Protocol (KServe v2) under /v2, POST /predict for image files, GET /metrics "
                                          "for Prometheus and a web page at /. Needs the serve extra "
                                          "(pip install 'mobilenetv3[serve]'). SIGTERM or Ctrl-C stops it after "
                                          "the requests in flight.",
                              formatter_class=_DefaultsShown)
    p.add_argument("model", nargs="+", help="a checkpoint or weights in any format the project reads, an exported "
                   ".onnx or .xml; several of them (each named after its file); or a model repository folder "
                   "(REPO/NAME/VERSION/FILE or REPO/NAME.EXT: see the README)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (other than loopback: set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--grpc-port", type=int, help="also serve the Open Inference Protocol over gRPC on this port "
                                                 "(Triton's GRPCInferenceService; default: no gRPC)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="auto: each exported file's own runtime (ONNX Runtime for .onnx, OpenVINO for .xml, ...), "
                        "PyTorch for weights; another runtime exports weights first")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="OpenVINO's inference precision (default fp32; bf16 "
                                                               "only on a CPU with native bf16)")
    p.add_argument("--max-batch", type=int, default=32, help="most images in one model run (1: no batching)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="longest a request waits for others to batch with")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with the model and its batcher")
    p.add_argument("--threads", type=int, help="threads of the runtime (default: the CPUs less one, shared by the "
                                               "workers: the HTTP loop and decoding need a core)")
    p.add_argument("--name", help="the model's name in /v2/models/NAME (default: its architecture)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${{{_api_key_variable()}}})")
    p.add_argument("--access-log", action="store_true", help="log every request, with its X-Request-ID")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key (unless it is in --ssl-certfile)")
    _add_serve_limits(p, MAX_PIXELS)
    p.set_defaults(handler=_cmd_serve)


def _add_serve_limits(p: argparse.ArgumentParser, max_pixels: int) -> None:
    """What a server admits, how long it waits, and how it batches: the serve flags that bound its work."""
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest request body (larger: 413)")
    p.add_argument("--max-pixels", type=int, default=max_pixels, help="largest image (width x height) decoded")
    p.add_argument("--topk", type=int, default=5, help="classes per image in /predict (?topk= overrides)")
    p.add_argument("--decode-threads", type=int, default=2, help="threads decoding uploaded images")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="run every batch size once before listening (kernels and memory ready for the first request)")
    p.add_argument("--keep-alive-s", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--preferred-batch", type=int, nargs="+", default=[], metavar="SIZE",
                   help="batch sizes that run at once, without waiting --max-delay-ms for more (Triton's)")
    p.add_argument("--max-queue", type=int,
                   help="inference requests in progress at most; more get 503 with Retry-After at once "
                        "(default: --max-batch, at least 32)")
    p.add_argument("--timeout-s", type=float, default=10.0,
                   help="a request's deadline, its upload included (the header X-Request-Timeout-Ms may shorten "
                        "it): a body still arriving then gets 408; a request not yet run, 503, and is dropped")
    p.add_argument("--max-request-pixels", type=int,
                   help="pixels one request may decode, all its images together (JPEGs at their reduced "
                        "decoding size), checked from the headers before decoding (default: --max-pixels)")
    p.add_argument("--max-images", type=int, default=64, help="files per /predict, images per v2 request")
    p.add_argument("--header-timeout-s", type=float, default=5.0,
                   help="a connection whose request headers take longer is closed (silent and slow-loris clients)")
    p.add_argument("--grace-s", type=float, default=15.0,
                   help="on SIGTERM, how long requests in progress may finish before they are ended with a 503 "
                        "(keep it below Kubernetes' terminationGracePeriodSeconds)")


def _api_key_variable() -> str:
    from .tasks.serve import API_KEY_VARIABLE

    return API_KEY_VARIABLE


def _cmd_serve(args: argparse.Namespace) -> int:
    from .tasks import serve

    settings = dict(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_upload_mb=args.max_upload_mb,
                    max_pixels=args.max_pixels, topk=args.topk, decode_threads=args.decode_threads, warmup=args.warmup,
                    preferred_batch=tuple(args.preferred_batch), max_queue=args.max_queue, timeout_s=args.timeout_s,
                    max_request_pixels=args.max_request_pixels, max_images=args.max_images, grpc_port=args.grpc_port)
    if args.api_key is not None:
        settings["api_key"] = args.api_key
    serve(source=args.model, host=args.host, port=args.port, runtime=args.runtime, workers=args.workers, name=args.name,
          threads=args.threads, precision=args.precision, access_log=args.access_log, keep_alive_s=args.keep_alive_s,
          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, header_timeout_s=args.header_timeout_s,
          grace_s=args.grace_s, **settings)
    _exit_now()


def _exit_now() -> None:
    """The server has stopped and said so: exit 0 at once. The interpreter's teardown (freeing torch's modules
    and the models) took another 2-3 s on 2 busy cores, past a --grace-s that an orchestrator counts on."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------- convert
def _add_convert(subparsers) -> None:
    from .weights import FORMATS

    p = subparsers.add_parser("convert", help="convert weights between MindSpore .ckpt, torchvision, timm and ours",
                              description="Convert MobileNetV3 weights between formats. The source format is "
                                          "detected from the file; the target from DST's extension or --to "
                                          "(.ckpt MindSpore, .pt ours, .safetensors; .pth needs --to).")
    p.add_argument("src", help="source weights")
    p.add_argument("dst", help="output file")
    p.add_argument("--to", choices=FORMATS, help="target format when DST's extension does not say")
    p.add_argument("--from", dest="from_format", choices=FORMATS, help="(detected; checked if given)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    p.add_argument("--crc", action=argparse.BooleanOptionalAction, default=None,
                   help="end the .ckpt in MindSpore's CRC trailer (save_checkpoint's crc_check=True); "
                        "default: when SRC is a .ckpt with one")
    p.add_argument("--any-architecture", action="store_true",
                   help="write a .ckpt of weights that are not the seed's network (another input channel count, "
                        "width or head width: for a seed network changed to match); a stem stride or head bias "
                        "stays refused (default: refused, each difference named)")
    p.set_defaults(handler=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .tasks import convert_weights

    r = convert_weights(source=args.src, output=args.dst, to=args.to, from_format=args.from_format, ema=args.ema,
                        crc=args.crc, any_architecture=args.any_architecture)
    shown = ", ".join(f"{k}={v}" for k, v in r.model_kwargs.items() if k in ("num_classes", "width_mult",
                                                                             "head_channels", "head_bias"))
    print(f"{r.source} ({r.source_format}, {r.model_name}, {shown}) -> {r.output} ({r.target_format}"
          f"{', with a CRC trailer' if r.crc else ''})")
    if r.training_state_kept:
        print(f"training state kept: {', '.join(r.training_state)}")
    elif r.training_state:
        print(f"training state dropped ({r.target_format} files hold weights only; continue the run from "
              f"{r.source} with --resume): {', '.join(r.training_state)}")
    return 0


# ------------------------------------------------------------------------------------------ bench
def _add_bench(subparsers) -> None:
    from .benchmarking import CORE_MODES, INFERENCE_VARIANTS, affinity

    p = subparsers.add_parser("bench", help="benchmark latency and throughput against torchvision",
                              description="Time our inference paths or training step next to torchvision's in the "
                                          "same run; prints ratios (>1: faster than torchvision; for inference also "
                                          "against the faster of torchvision's model exported by hand to ONNX "
                                          "Runtime and to OpenVINO). The full suite is benchmarks/run_all.sh.")
    p.add_argument("what", choices=("inference", "training"), help="what to time")
    p.add_argument("--model", nargs="+", default=["mobilenetv3_large"], help="models (default mobilenetv3_large)")
    p.add_argument("--batch-size", nargs="+", type=int, help="batch sizes (default: 1 and 32 for inference, 32 for "
                                                             "training)")
    p.add_argument("--batch", dest="batch_size", nargs="+", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old spelling, for one release
    _add_image_size(p, "image size (default 224)", default=224)
    p.add_argument("--quick", action="store_true", help="fewer repeats and no torch.compile")
    p.add_argument("--variants", nargs="+", choices=INFERENCE_VARIANTS, metavar="VARIANT",
                   help="inference paths to time, each quoted (default: all, less torch.compile with --quick, less "
                        "those this machine cannot run); choose from: " + ", ".join(INFERENCE_VARIANTS))
    p.add_argument("--threads", type=int, help="inference threads of the all-core run, in torch, ONNX Runtime, "
                                               "OpenVINO and ExecuTorch alike (default: one per core this process "
                                               f"may run on, here {len(affinity())})")
    p.add_argument("--cores", choices=CORE_MODES, default="all",
                   help="inference on all cores, on one (the process pinned to one core with CPU affinity, one "
                        "thread), or both (the one-core run in a process of its own, then all) (default all)")
    p.add_argument("--one-core", dest="cores", action="store_const", const="one", default=argparse.SUPPRESS,
                   help="the same as --cores one")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmarking import busy_warning, format_rows, machine_info
    from .tasks.bench import bench

    machine = machine_info()
    print(f"{machine['cpu']} (flags {' '.join(machine['cpu_flags']) or 'n/a'}), {machine['cores']} cores, "
          f"torch {machine['torch']}" + (f", onnxruntime {machine['onnxruntime']}" if "onnxruntime" in machine else "")
          + f", load average {machine['load_average_1min']:.2f}", flush=True)
    warning = busy_warning(machine["load_average_1min"], machine["cores"] or 1)
    if warning:
        print(warning, flush=True)
    result = bench(args.what, models=args.model, batch_sizes=args.batch_size, image_size=args.image_size,
                   quick=args.quick, output=args.out, threads=args.threads, cores=args.cores, variants=args.variants,
                   machine=machine).to_dict()
    for note in result.get("notes", []):
        print(f"{note} (left out)")
    if args.what == "training":
        print(format_rows(result["rows"], ["speedup_vs_torchvision_loop"]))
        print("ratio: torchvision's time over ours (above 1: faster than torchvision)")
        return 0
    print(format_rows(result["rows"], ["speedup_vs_torchvision_eager", "speedup_vs_best_by_hand"]))
    for cores, settings in result["thread_settings"].items():
        print(f"{'one core' if cores == 'one' else 'all cores'}: {settings['threads']} thread(s), "
              f"affinity {settings['affinity']}")
    print("vs tv: torchvision eager's time over the path's; vs hand: the faster of torchvision's model exported by "
          "hand to ONNX Runtime and to OpenVINO, its time over the path's (above 1: faster)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Train, evaluate, export and serve MobileNetV3 image classifiers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for add in (_add_train, _add_eval, _add_export, _add_predict, _add_serve, _add_convert, _add_bench,
                _add_info):
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    debug = bool(os.environ.get("MOBILENETV3_DEBUG"))
    try:
        return args.handler(args)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(_as_flags(err, args.command))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except RunError as err:  # a fault the run itself reports (a NaN loss, a checkpoint it could not write)
        if debug:
            raise
        print(f"{PROG} {args.command}: failed: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the boundary: one line instead of a traceback
        if debug:
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


# The tasks' parameters whose flag is not the parameter's name, by command (a setting's flag is its name with dashes)
FLAG_NAMES = {"eval": dict(source="--checkpoint", out_dir="--out"), "export": dict(source="--checkpoint"),
              "predict": dict(source="--checkpoint"), "serve": dict(source="MODEL"),
              "convert": dict(source="SRC", output="DST"), "bench": dict(kind="WHAT", models="--model",
                                                                       batch_sizes="--batch-size", output="--out")}


def _as_flags(err: BaseException, command: str = ""):
    """A setting given on the command line (or left at its default) named as the flag the user types, not as
    the task's parameter or config field: ``--batch-size must be at least 1``; a YAML file's keeps its key."""
    if isinstance(err, SettingError) and err.source in (None, "flag"):
        flag = FLAG_NAMES.get(command, {}).get(err.key) or f"--{err.key.replace('_', '-')}"
        return f"{flag} {err.problem}"
    return err


def _one_line(err) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
