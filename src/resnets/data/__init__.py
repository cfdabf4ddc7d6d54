"""Datasets in their publishers' formats, and the batch pipelines that feed training.

``load_dataset`` reads a dataset into a ``DatasetBundle`` of splits (see ``sources`` for the
formats and the split rule); ``train_batches`` / ``eval_batches`` turn a split into uint8
batches on the training device, which ``Normalize`` turns into the model's float inputs there
(see ``pipelines`` for the resume and multi-process guarantees).
"""
from .pipelines import AUGMENTATIONS, Normalize, eval_batches, steps_per_epoch, train_batches
from .sources import (
    DATASETS,
    DatasetBundle,
    DatasetSpec,
    EncodedSplit,
    FolderSplit,
    ShardSplit,
    Split,
    TensorSplit,
    cache_dir,
    dataset_spec,
    load_dataset,
)
from .preparation import prepare_shards

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DatasetBundle",
    "DatasetSpec",
    "EncodedSplit",
    "FolderSplit",
    "Normalize",
    "ShardSplit",
    "Split",
    "TensorSplit",
    "cache_dir",
    "dataset_spec",
    "eval_batches",
    "load_dataset",
    "prepare_shards",
    "steps_per_epoch",
    "train_batches",
]
