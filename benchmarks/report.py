"""Render BENCHMARKS.md (and a PNG chart) from the JSON results the benchmark scripts wrote.

    python benchmarks/report.py            # reads benchmarks/results/*.json, writes BENCHMARKS.md
    python benchmarks/report.py --results /tmp/results --out /tmp/BENCHMARKS.md   # from other results
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The inference targets, as ratios measured in the same run: the best accurate path (ours; INT8 where proven)
# against the best by-hand fp32 path (torchvision's model in ONNX Runtime or OpenVINO, whichever is faster) and
# torchvision eager; each INT8 path against its own runtime's fp32. VNNI and native bf16 are what INT8 and bf16
# gain speed from.
TARGET_BY_HAND, TARGET_EAGER, TARGET_INT8 = 1.5, 4.0, 1.5
VNNI, BF16 = {"avx512_vnni", "avx_vnni"}, {"avx512_bf16", "amx_bf16"}


def _load(name: str, results: Path = RESULTS):
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# What was tried against each target, printed under the target when the run misses it.
TRIED = {
    "int8": "INT8 on this CPU: ONNX Runtime's static QDQ quantisation (per-channel and per-tensor weights, QDQ and "
            "QOperator formats, U8/S8 activations, with and without pre-processing) all ran slower than fp32 here: "
            "the CPU has AVX2 but no AVX-512 VNNI, so int8 GEMMs gain nothing and MobileNetV3's depthwise convs and "
            "hard-swish add quantise/dequantise work. The INT8 file stays useful for its size (4x smaller) and for "
            "CPUs with VNNI.",
    "latency": "Batch-1 latency: tried BatchNorm folded into the convolutions, channels_last, TorchScript, "
               "torch.compile, ONNX Runtime fp32 (BatchNorm folded, pooling as GlobalAveragePool, native "
               "HardSwish/HardSigmoid), OpenVINO fp32 (the IR converted from PyTorch directly) and INT8. PyTorch "
               "eager at batch 1 is dominated by per-operator overhead, not arithmetic (the floor above is a few "
               "ms), which is what the 4x target bets on; ONNX Runtime's thread pool runs without spinning "
               "in this benchmark, which keeps the interleaved timings honest and costs it some latency.",
    "int8_accuracy": "INT8 accuracy: static post-training quantisation with ONNX Runtime (QDQ, per-channel int8 "
                     "weights, uint8 activations, MinMax calibration on 320 training images). MobileNetV3 is known "
                     "to lose accuracy this way (hard-swish and the squeeze-excite gates have narrow, skewed "
                     "ranges). Not tried yet: percentile or entropy calibration, leaving the squeeze-excite and "
                     "classifier nodes in fp32, quantisation-aware training.",
    "jpeg": "JPEG loading: decode and resize (libjpeg through PIL, the same in both pipelines) dominate. Tried: "
            "RandomResizedCrop as one PIL resize with a box instead of crop-then-resize, colour jitter and "
            "normalisation on whole uint8 batches in place; together they give the ratio above, not 1.5x. "
            "Reduced-size JPEG decoding (`Image.draft`) does not apply: crops of ~500x375 photos are rarely twice "
            "the 224 px output. Left to try: a SIMD decoder (torchvision.io.decode_jpeg, Pillow-SIMD).",
    "train": "Training step: channels_last, in-place activations and residual adds are in the model and the step; "
             "torch.compile is available (`--compile`) and off by default.",
}


def machine_line(machine: dict) -> str:
    flags = machine.get("cpu_flags")
    parts = [f"{machine['cpu']} (flags {' '.join(flags) if flags else 'not recorded by this run'})",
             f"{machine['cores']} cores", f"torch {machine['torch']} "
             f"({machine['torch_threads']} threads)"]
    if machine.get("onnxruntime"):
        parts.append(f"onnxruntime {machine['onnxruntime']}")
    if machine.get("load_average_1min") is not None:
        parts.append(f"load average at start {machine['load_average_1min']:.2f}")
    return ", ".join(parts)


def _cores_label(cores) -> str:
    return {"one": "one core (pinned with CPU affinity)", "all": "all cores"}.get(cores, "threads not recorded")


def _inference_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (cores, threads), one core first; rows of a run that did not record them form one group."""
    groups: dict[tuple, list[dict]] = {}
    for row in sorted(rows, key=lambda r: {"one": 0, "all": 1}.get(r.get("cores"), 2)):
        groups.setdefault((row.get("cores"), row.get("threads")), []).append(row)
    return groups


def _thread_lines(result: dict) -> list[str]:
    settings = result.get("thread_settings")
    if not settings:
        return ["Thread settings: not recorded by this run (torch's default thread count, ONNX Runtime without "
                "spinning)."]
    lines = ["Thread settings (the same count in every runtime):", ""]
    for cores, s in settings.items():
        ort, ov = s["onnxruntime"], s["openvino"]
        lines.append(f"- {_cores_label(cores)}: {s['threads']} thread(s), affinity {s['affinity']}; torch "
                     f"`set_num_threads({s['torch']['set_num_threads']})`, ONNX Runtime intra-op "
                     f"{ort['intra_op_num_threads']} / inter-op {ort['inter_op_num_threads']} threads, spinning "
                     f"{'off' if ort['allow_spinning'] == '0' else 'on'}; OpenVINO `INFERENCE_NUM_THREADS` "
                     f"{ov['INFERENCE_NUM_THREADS']}, `PERFORMANCE_HINT` {ov['PERFORMANCE_HINT']}; load average at "
                     f"its start {s['load_average_1min']:.2f}")
    return lines


def _ratio_cell(value) -> str:
    return f"{value:.2f}x" if value else "n/a"


def _not_applicable(machine: dict) -> list[str]:
    """Which targets this CPU cannot meet by design: INT8 speed without VNNI, bf16 without native bf16."""
    flags = machine.get("cpu_flags")
    if flags is None:
        return ["- CPU flags not recorded by this run: whether the INT8 speed and bf16 targets apply is unknown"]
    missing = []
    if not set(flags) & VNNI:
        missing.append("the INT8 speed targets (no avx512_vnni or avx_vnni: no fast INT8 dot products)")
    if not set(flags) & BF16:
        missing.append("bf16 (no avx512_bf16 or amx_bf16: the best accurate path is an fp32 one)")
    return [f"- not applicable on this CPU: {'; '.join(missing)}"] if missing else []


# An INT8 path counts as accurate where format_accuracy.json shows its format meeting the INT8 accuracy target
# (<= 0.5 pt below fp32, >= 99.0% agreement) on every trained model scored there.
INT8_VARIANTS = {"onnx-int8": "onnxruntime int8", "openvino-int8": "openvino int8",
                 "executorch-int8": "executorch int8"}
ACCURATE_INT8: set = set()


def accurate_int8(accuracy: Optional[dict]) -> set:
    """The INT8 benchmark variants whose format met the accuracy target on every model of ``accuracy``."""
    if not accuracy or not accuracy.get("models"):
        return set()
    met = set(INT8_VARIANTS)
    for model in accuracy["models"]:
        met &= {row["format"] for row in model["rows"] if row.get("met") and row["format"] in INT8_VARIANTS}
    return {INT8_VARIANTS[f] for f in met}


def _best_accurate(rows: list[dict]):
    """The fastest of our paths that keep fp32's accuracy (INT8 only where proven on trained models), or None."""
    accurate = [r for r in rows if not r["variant"].startswith("torchvision")
                and (not r["variant"].endswith("int8") or r["variant"] in ACCURATE_INT8)]
    return min(accurate, key=lambda r: r["ms"]) if accurate else None


def _group_targets(rows: list[dict], label: str, int8_applies: bool) -> list[str]:
    """The targets line of one model/batch/threads group: the best accurate path (ours; INT8 where proven) against
    1.5x the best by-hand path and 4x torchvision eager, and each INT8 path against its runtime's fp32."""
    best = _best_accurate(rows)
    if best is None:
        return []
    hand, eager = best["speedup_vs_best_by_hand"], best["speedup_vs_torchvision_eager"]
    parts = [f"best accurate path **{best['variant']}** {best['ms']:.2f} ms",
             f"{_ratio_cell(hand)} the best by hand ({best['best_by_hand'] or 'not measured'}; target >= "
             f"{TARGET_BY_HAND:g}x: {_verdict(hand >= TARGET_BY_HAND) if hand else 'n/a'})",
             f"{_ratio_cell(eager)} torchvision eager (target >= {TARGET_EAGER:g}x: "
             f"{_verdict(eager >= TARGET_EAGER) if eager else 'n/a'})"]
    for row in rows:
        if row["variant"].endswith("int8"):
            ratio = row.get("speedup_vs_own_fp32")
            verdict = ("not applicable on this CPU" if not int8_applies else _verdict(ratio >= TARGET_INT8)
                       if ratio else "n/a")
            parts.append(f"{row['variant']} {_ratio_cell(ratio)} its fp32 (target >= {TARGET_INT8:g}x: {verdict})")
    first = rows[0]
    return [f"- {first['model']} batch {first['batch']}, {label}: " + "; ".join(parts)]


def _inference_targets(result: dict, groups: dict) -> list[str]:
    machine = result["machine"]
    int8_applies = bool(set(machine.get("cpu_flags") or ()) & VNNI) or machine.get("cpu_flags") is None
    lines = []
    for (cores, threads), rows in groups.items():
        label = f"{_cores_label(cores)}, {threads} thread(s)" if threads else _cores_label(cores)
        by_case: dict[tuple, list[dict]] = {}
        for row in rows:
            by_case.setdefault((row["model"], row["batch"]), []).append(row)
        for case in by_case.values():
            lines += _group_targets(case, label, int8_applies)
    lines += _not_applicable(machine)
    agreement = result.get("int8_agreement")
    if agreement:
        top1 = agreement["top1"]
        lines += [f"- INT8 top-1 agreement with fp32 on {agreement['dataset']} eval ({agreement['images']} images): "
                  f"{100 * agreement['int8_fp32_top1_agreement']:.2f}% (target >= 99.5%: "
                  f"{_verdict(agreement['int8_fp32_top1_agreement'] >= 0.995)}); top-1 PyTorch "
                  f"{100 * top1['pytorch']:.2f}%, ONNX fp32 {100 * top1['fp32']:.2f}%, INT8 {100 * top1['int8']:.2f}%"]
        if agreement["int8_fp32_top1_agreement"] < 0.995:
            lines += ["", TRIED["int8_accuracy"]]
    return lines


def _inference_tried(groups: dict) -> list[str]:
    """What was tried, under the targets, for each kind of target some group missed."""
    rows = [r for group in groups.values() for r in group]
    cases: dict[tuple, list[dict]] = {}
    for row in rows:
        cases.setdefault((row["model"], row["batch"], row.get("cores"), row.get("threads")), []).append(row)
    bests = [_best_accurate(case) for case in cases.values()]
    lines = []
    if any(b and (b["speedup_vs_torchvision_eager"] or 0) < TARGET_EAGER for b in bests):
        lines += ["", TRIED["latency"]]
    if any((r.get("speedup_vs_own_fp32") or 2) < 1 for r in rows if r["variant"] == "onnxruntime int8"):
        lines += ["", f"ONNX Runtime's INT8 is slower than its fp32 here. {TRIED['int8']}"]
    return lines


def format_accuracy_section(result: dict) -> list[str]:
    """Top-1 of every export format on the same eval set, with the accuracy targets (format_accuracy.py)."""
    lines = ["## Accuracy of every format", "", f"Machine: {machine_line(result['machine'])}. Each trained "
             "checkpoint exported (and verified) in every format, each file run in its own runtime over the whole "
             "eval split. Targets: fp32 within 0.1 pt of eager, bf16 within 0.2 pt, INT8 at most 0.5 pt below its "
             "fp32 with >= 99.0% top-1 agreement.", ""]
    for model in result["models"]:
        lines += [f"{model['model']} ({model['checkpoint']}), {model['dataset']}, {model['images']} images:", "",
                  "| format | precision | top-1 | agreement with eager | agreement with its fp32 | target |",
                  "|---|---|---|---|---|---|"]
        for row in model["rows"]:
            eager, fp32 = (f"{100 * row[key]:.2f}%" if key in row else "" for key in ("agreement_with_eager",
                                                                                        "agreement_with_fp32"))
            lines.append(f"| {row['format']} | {row['precision']} | {100 * row['top1']:.2f}% | "
                         f"{eager} | {fp32} | {row.get('verdict', '')} |")
        lines.append("")
    return lines


def inference_section(result: dict) -> list[str]:
    from mobilenetv3.benchmarking import (
        add_ratios,  # the ratios bench computes, also for rows of older runs without them
    )

    groups = _inference_groups(add_ratios([dict(r) for r in result["rows"]]))
    peak = result["peak"]
    lines = [f"## Inference latency ({result['rows'][0]['size'] if result['rows'] else 224} px)", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"Peak fp32 throughput (all cores): {peak['measured_gflops']:.1f} GFLOP/s measured ({peak['method']}); "
             f"nominal {peak['nominal_gflops'] or float('nan'):.1f} GFLOP/s ({peak['nominal_formula']}).", ""]
    lines += _thread_lines(result) + [""]
    if result.get("busy_warning"):
        lines += [f"**{result['busy_warning']}**", ""]
    if result.get("notes"):
        lines += [f"Left out: {'; '.join(result['notes'])}.", ""]
    lines += ["Ratios: a reference's time over the path's, in the same model/batch/threads group (above 1: faster). "
              "By hand: the fastest of torchvision's model exported to ONNX Runtime, converted to OpenVINO and "
              "converted to ncnn with pnnx (its default options).", ""]
    for (cores, threads), rows in groups.items():
        label = _cores_label(cores)
        lines += [f"### {label[0].upper() + label[1:]}" + (f", {threads} thread(s)" if threads else ""), "",
                  "| model | batch | path | ms (median) | images/s | vs torchvision eager | vs best by hand |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['variant']} | {r['ms']:.2f} | {r['images_per_s']:.1f} | "
                  f"{_ratio_cell(r['speedup_vs_torchvision_eager'])} | {_ratio_cell(r['speedup_vs_best_by_hand'])} |"
                  for r in rows]
        lines += [""]
    lines += ["Physical floor (the model's FLOPs over the all-core peak above; no implementation can beat it):", "",
              "| model | batch | GFLOPs | floor at measured peak (ms) | floor at nominal peak (ms) |",
              "|---|---|---|---|---|"]
    for floor in result["floor"]:
        nominal = f"{floor['floor_ms_nominal_peak']:.2f}" if floor["floor_ms_nominal_peak"] else "n/a"
        lines.append(f"| {floor['model']} | {floor['batch']} | {floor['gflops']:.3f} | "
                     f"{floor['floor_ms_measured_peak']:.2f} | {nominal} |")
    proven = (f"INT8 counted for {', '.join(sorted(ACCURATE_INT8))} (its accuracy target met on every trained "
              "model in the accuracy table)" if ACCURATE_INT8 else "INT8 left out (no accuracy table shows it meeting "
              "its accuracy target)")
    lines += ["", f"Targets (best accurate path: ours, {proven}, bf16 counted where the CPU has it natively):",
              ""] + _inference_targets(result, groups) + _inference_tried(groups)
    return lines


def training_section(result: dict) -> list[str]:
    lines = ["## Training throughput", "", f"Machine: {machine_line(result['machine'])}.", "",
             "| model | batch | size | path | ms/step | images/s | vs torchvision loop |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"] + result.get("end_to_end", []):
        size = row.get("size", "")
        if row.get("stem_stride") == 1:
            size = f"{size} (grayscale, stride-1 stem)"
        lines.append(f"| {row['model']} | {row['batch']} | {size} | {row['variant']} | {row['ms']:.1f} | "
                     f"{row['images_per_s']:.1f} | {row['speedup_vs_torchvision_loop']:.2f}x |")
    ours = [r for r in result["rows"] if r["variant"] == "mobilenetv3 train step"]
    if ours:
        worst = min(r["speedup_vs_torchvision_loop"] for r in ours)
        lines += ["", f"Target: no slower than the bare loop at every size ({_verdict(worst >= 1.0)}; lowest ratio "
                      f"{worst:.2f}x), aiming for >= 1.25x ({_verdict(worst >= 1.25)})."]
        if worst < 1.25:
            lines += ["", TRIED["train"]]
    return lines


def loader_section(result: dict) -> list[str]:
    s = result["settings"]
    lines = ["## Data loading", "", f"Machine: {machine_line(result['machine'])}.", "",
             f"Fashion-MNIST, {s['images']} images at {s['native_size']} px -> {s['image_size']} px, preset "
             f"{s['preset']}, batch {s['batch_size']}:", "", "| pipeline | workers | images/s |", "|---|---|---|"]
    for loader in result["loaders"]:
        lines.append(f"| {loader['pipeline']} | {loader['workers']} | {loader['images_per_s']:.0f} |")
    for name, step in result["train_step"].items():
        lines.append(f"| training step ({name}) | | {step['images_per_s']:.0f} |")
    lines += ["", f"Loader / training step: {result['loader_to_train_ratio']:.1f}x (target >= 5x: "
                  f"{_verdict(result['loader_to_train_ratio'] >= 5)}); ours / torchvision's stock pipeline "
                  f"{result['ratio_to_torchvision']:.1f}x."]
    jpeg = result.get("jpeg")
    if jpeg:
        lines += ["", f"JPEG ImageFolder ({jpeg['images']} generated ~500x375 JPEGs of real photographs, "
                      f"{jpeg['preset']} at {jpeg['size']} px, batch {jpeg['batch_size']}):", "",
                  "| pipeline | workers | images/s |", "|---|---|---|"]
        for loader in jpeg["loaders"]:
            lines.append(f"| {loader['pipeline']} | {loader['workers']} | {loader['images_per_s']:.1f} |")
        lines += ["", f"Ours / torchvision's ImageFolder + PIL transforms: {jpeg['ratio_to_torchvision']:.2f}x "
                      f"(target >= 1.5x: {_verdict(jpeg['ratio_to_torchvision'] >= 1.5)})."]
        if jpeg["ratio_to_torchvision"] < 1.5:
            lines += ["", TRIED["jpeg"]]
    return lines


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def serve_section(result: dict) -> list[str]:
    s, t = result["settings"], result["targets"]
    quick = " (a `--quick` smoke run)" if result.get("quick") else ""
    lines = ["## Serving (`mobilenetv3 serve` on loopback)", "", f"Machine: {machine_line(result['machine'])}.", "",
             f"{s['clients']} concurrent clients, one keep-alive connection each, POST a 256x256 JPEG to `/predict`: "
             f"{s['requests']} requests per mode in {s['rounds']} interleaved rounds, after {s['warmup']} warm-up "
             f"requests to each server{quick}; model {s['model']}; batching on is `--max-batch {s['max_batch']} "
             f"--max-delay-ms {s['max_delay_ms']:g}`, off is `--max-batch 1`.", "",
             "| mode | requests | failed | images/s | p50 ms | p99 ms | p99/p50 | mean batch | RSS first / last MB "
             "| RSS growth |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["modes"]:
        lines.append(f"| {r['mode']} | {r['requests']} | {r['failed']} | {r['images_per_s']:.1f} | "
                     f"{_number(r['p50_ms'], '.1f')} | {_number(r['p99_ms'], '.1f')} | "
                     f"{_number(r['p99_over_p50'], '.2f')} | {_number(r['mean_batch'], '.1f')} | "
                     f"{_number(r['rss_first_mb'], '.0f')} / {_number(r['rss_last_mb'], '.0f')} | "
                     f"{_number(r['rss_growth_pct'], '+.1f')}% |")
    failed, rss_every = t["failed"], result["modes"][0]["rss_every"]
    fewer = ", over fewer requests" if failed["requests"] < failed["target_requests"] else ""
    lines += ["", "Targets:", "",
              f"- images/s batching on / off: {t['speedup']['value']:.2f}x (target >= {t['speedup']['target']:g}x: "
              f"{_verdict(t['speedup']['met'])})",
              f"- p99 / p50 latency with batching on: {_number(t['p99_over_p50']['value'], '.2f')}x (target < "
              f"{t['p99_over_p50']['target']:g}x: {_verdict(t['p99_over_p50']['met'])})",
              f"- failed requests: {failed['value']} over {failed['requests']} per mode (target 0 over "
              f"{failed['target_requests']}: {_verdict(failed['met'])}{fewer})",
              f"- server RSS growth, read after every {rss_every} requests, first reading to last (the worse mode): "
              f"{_number(t['rss_growth_pct']['value'], '+.1f')}% (target < {t['rss_growth_pct']['target']:g}%: "
              f"{_verdict(t['rss_growth_pct']['met'])})"]
    return lines


def serve_reload_section(result: dict) -> list[str]:
    """``benchmarks/serve_reload.py``: hot reloads under load."""
    s, steady, during = result["settings"], result["steady"], result["during_reload"]
    loads = sorted(r["seconds"] for r in result["reloads"])
    quick = " (a `--quick` smoke run)" if result.get("quick") else ""
    lines = ["## Hot reload under load (`mobilenetv3 serve` of a model repository)", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"{s['clients']} closed-loop clients POST a 256x256 JPEG to `/predict?model=m` while a new version of "
             f"the model ({s['model']}) is written to the repository and loaded with `POST "
             f"/v2/repository/models/m/load`, {len(loads)} times{quick}; server `--max-batch {s['max_batch']} "
             f"--max-delay-ms {s['max_delay_ms']:g}`.", "",
             "| requests | answered | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for name, p in (("steady", steady), ("while a reload runs", during)):
        lines.append(f"| {name} | {p['requests']} | {_number(p['p50_ms'], '.1f')} | {_number(p['p99_ms'], '.1f')} | "
                     f"{_number(p['max_ms'], '.1f')} |")
    lines += ["", f"Each load (read, check, warm every batch size, swap, drain the old version): "
                  f"{loads[0]:.1f}-{loads[-1]:.1f} s (median {statistics.median(loads):.1f}); versions answered: "
                  f"{', '.join(result['versions_seen'])}; server RSS {_number(result['rss_before_mb'], '.0f')} MB "
                  f"before the reloads, {_number(result['rss_after_mb'], '.0f')} MB after.", "",
              f"- failed requests: {result['failed']} of {result['requests']} over {len(loads)} reloads under "
              f"{s['clients']} clients (target 0 over 10 under 16: {_verdict(result['target']['met'])})"]
    return lines


def serve_triton_section(result: dict) -> list[str]:
    """``benchmarks/serve_triton.py``: Triton's own client against the server, beside ``mobilenetv3 predict``."""
    s, target = result["settings"], result["target_max_abs_diff"]
    quick = " (a `--quick` smoke run)" if result.get("quick") else ""
    lines = ["## Triton's client (`tritonclient` against `mobilenetv3 serve`)", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"`examples/triton_client.py`, run unmodified, sends each of "
             f"{s.get('images_are') or str(len(s['images'])) + ' images'}{quick} as raw "
             f"pixels (UINT8) to a server of {s['model']} over HTTP with JSON tensors, HTTP with binary tensors and "
             f"gRPC, and asks for the top {s['top']} by the classification extension; `mobilenetv3 predict` "
             "classifies the same files.", "",
             "| protocol | largest difference from predict's probabilities | target |", "|---|---|---|"]
    for protocol, diff in result["max_abs_diff"].items():
        lines.append(f"| {protocol.replace('_', ' ')} | {diff:.1e} | <= {target:g}: {_verdict(diff <= target)} |")
    lines += ["", f"- the classification extension's top {s['top']} ranked as predict ranks them: "
                  f"{_verdict(result['classification_ranked_as_predict'])}; the example took "
                  f"{result['example_seconds_median']:.2f} s per image (median; a fresh interpreter, four calls)"]
    return lines


def accuracy_section(result: dict) -> list[str]:
    reached = result["reached"]
    lines = ["## Time to accuracy", ""]
    if reached:
        lines.append(f"Fashion-MNIST test top-1 {100 * result['target']:.1f}% first reached at epoch "
                     f"{reached['epoch']} after {reached['train_minutes']:.1f} minutes of training "
                     f"(top-1 {100 * (reached['top1'] or 0):.2f}%, EMA {100 * (reached['ema_top1'] or 0):.2f}%).")
    else:
        lines.append(f"The {100 * result['target']:.1f}% target was not reached: best top-1 "
                     f"{100 * result['best_top1']:.2f}%, best EMA top-1 {100 * (result['best_ema_top1'] or 0):.2f}%.")
    lines += ["", f"Run: {result['epochs']} epochs, {result['total_train_minutes']:.1f} minutes of training "
                  f"(evaluation excluded); final top-1 {100 * (result['final_top1'] or 0):.2f}%, "
                  f"final EMA top-1 {100 * (result['final_ema_top1'] or 0):.2f}%."]
    if result.get("resumes"):
        lines[-1] += f" Resumed {result['resumes']} times (`--resume auto`); its epoch times include any pauses."
    return lines


def gpu_section(result) -> list[str]:
    """``benchmarks/gpu_check.sh``'s table, or the plain statement that it has not run on a GPU."""
    lines = ["## On a GPU", "", "`bash benchmarks/gpu_check.sh` on one GPU (under 8 minutes): `tests/test_gpu.py`, "
             "training and inference images/s of MobileNetV3-Large at 224 px (bf16 autocast, channels_last; "
             "training also torch.compile) next to torchvision's `mobilenet_v3_large` in the same run, and JPEG "
             "loading with `--decode gpu` next to the CPU loader.", ""]
    if result is None or result.get("dry_run"):
        return lines + ["The GPU check has not yet run on a GPU: no figures here. (`--dry-run` runs the same code "
                        "paths on the CPU at tiny sizes; the default test suite runs it.)"]
    m, s, tests = result["machine"], result["settings"], result.get("tests") or {}
    train = {row["variant"]: row["images_per_s"] for row in result["training"]}
    infer, jpeg = result["inference"], result["jpeg"]
    rows = [("tests/test_gpu.py", tests.get("summary", "not run"), ""),
            (f"training, batch {s['train_batch']}", f"{train['mobilenetv3 train step']:.0f}",
             f"torchvision loop {train['torchvision + SGD loop']:.0f}"),
            (f"inference, batch {s['infer_batch']}", f"{infer['mobilenetv3']:.0f}",
             f"torchvision {infer['torchvision']:.0f}"),
            (f"JPEG loading, batch {jpeg['batch']}", f"--decode gpu {jpeg['gpu']:.0f}",
             f"--decode cpu {jpeg['cpu']:.0f} ({jpeg['workers']} workers)")]
    return lines + [f"Machine: {m['gpu']}, torch {m['torch']}, CUDA {m['cuda']} ({result['time']}).", "",
                    "| check | ours (images/s) | reference (images/s) |", "|---|---|---|"] + [
        f"| {name} | {ours} | {reference} |" for name, ours, reference in rows]


def chart(inference: dict, path: Path) -> None:
    """Speed against torchvision eager of each path, one panel per model, batch and core mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for row in inference["rows"]:
        groups.setdefault((row["model"], row["batch"], row.get("cores")), []).append(row)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), sharey=False, squeeze=False)
    for ax, ((model, batch, cores), rows) in zip(axes[0], groups.items()):
        rows = [r for r in rows if r.get("speedup_vs_torchvision_eager")]
        ax.barh([r["variant"] for r in rows], [r["speedup_vs_torchvision_eager"] for r in rows],
                color=["#999999" if r["variant"].startswith("torchvision") else "#3366cc" for r in rows])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{model.split('_')[1]} batch {batch}" + (f", {cores} core(s)" if cores else ""))
        ax.set_xlabel("speed vs torchvision eager")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def loader_chart(loader: dict, path: Path) -> None:
    """Images/s of each loader against the training step it feeds (log scale: they differ 100-fold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("Fashion-MNIST (in memory)", loader["loaders"], loader["train_step"])]
    if loader.get("jpeg"):
        panels.append((f"JPEG ImageFolder at {loader['jpeg']['size']} px", loader["jpeg"]["loaders"], {}))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.2), squeeze=False)
    for ax, (title, loaders, steps) in zip(axes[0], panels):
        names = [f"{r['pipeline']}, {r['workers']} worker(s)" for r in loaders]
        names += [f"training step ({n})" for n in steps]
        rates = [r["images_per_s"] for r in loaders] + [v["images_per_s"] for v in steps.values()]
        colours = ["#3366cc" if r["pipeline"] == "mobilenetv3" else "#999999" for r in loaders]
        colours += ["#cc6633"] * len(steps)
        ax.barh(names, rates, color=colours)
        ax.set_xscale("log")
        ax.set_xlabel("images/s (log scale)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


COMMANDS = """```bash
bash benchmarks/run_all.sh RUN_DIR   # RUN_DIR: a finished fashion-mnist-95 run, for INT8 agreement and time to accuracy
# or one at a time:
.venv/bin/python benchmarks/inference.py --int8-checkpoint RUN_DIR/best.pt
.venv/bin/python benchmarks/training.py
.venv/bin/python benchmarks/loader.py
.venv/bin/python benchmarks/serve.py
.venv/bin/python benchmarks/serve.py --reload
.venv/bin/python benchmarks/serve_triton.py --model RUN_DIR/last.pt
.venv/bin/python benchmarks/time_to_accuracy.py RUN_DIR
.venv/bin/python benchmarks/report.py
```"""


def main(argv=None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE.parent / "BENCHMARKS.md")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"the folder of result JSONs (default {RESULTS}); "
                                                                 "the charts are written there too")
    p.add_argument("--note", help="how this run differed from the commands below (e.g. fewer repeats)")
    args = p.parse_args(argv)
    lines = ["# Benchmarks", "",
             "Every figure is measured side by side with its reference in the same run, as the median of several "
             "timed repeats after warm-up; inference paths are timed in interleaved rounds so that a machine whose "
             "speed drifts affects all alike. Ratios above 1 are faster than the reference. Generated by "
             "`benchmarks/report.py` from `benchmarks/results/*.json`.", "", "Reproduce:", "", COMMANDS, ""]
    if args.note:
        lines += [f"This run: {args.note}", ""]
    ACCURATE_INT8.update(accurate_int8(_load("format_accuracy", args.results)))
    sections = [("inference", inference_section), ("format_accuracy", format_accuracy_section),
                ("training", training_section), ("loader", loader_section),
                ("serve", serve_section), ("serve_reload", serve_reload_section),
                ("serve_triton", serve_triton_section),
                ("time_to_accuracy", accuracy_section)]
    for name, render in sections:
        result = _load(name, args.results)
        if result is None:
            lines += [f"## {name.replace('_', ' ').capitalize()}", "", "Not measured yet.", ""]
            continue
        lines += render(result) + [""]
        charts = dict(inference=(chart, "inference speed-ups"), loader=(loader_chart, "loader throughput"))
        if name in charts:
            draw, title = charts[name]
            draw(result, args.results / f"{name}.png")
            link = os.path.relpath(args.results / f"{name}.png", args.out.resolve().parent)
            lines += [f"![{title}]({Path(link).as_posix()})", ""]
    lines += gpu_section(_load("gpu_check", args.results)) + [""]
    args.out.write_text("\n".join(lines))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
