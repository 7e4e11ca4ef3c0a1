"""Datasets (formats), transforms (named presets) and loaders (samplers, workers)."""
from .datasets import DATASETS, STATS, Dataset, ImageFiles, InMemoryImages, build_dataset, check_labels, draw_sample
from .loader import (
                     Batch,
                     BatchRequest,
                     EvalBatches,
                     TrainBatches,
                     build_loader,
                     check_scored_once,
                     default_workers,
                     eval_loader,
)
from .transforms import PRESETS, BatchAugment, Preprocessing, Recipe, build_preset, normalize_batch

__all__ = [
    "DATASETS", "STATS", "Dataset", "ImageFiles", "InMemoryImages", "build_dataset", "check_labels", "draw_sample",
    "Batch", "BatchRequest", "EvalBatches", "TrainBatches", "build_loader", "check_scored_once", "default_workers",
    "eval_loader",
    "PRESETS", "BatchAugment", "Preprocessing", "Recipe", "build_preset", "normalize_batch",
]
