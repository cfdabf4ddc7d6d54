"""Batch pipelines: infinite, exactly resumable training batches and ordered evaluation batches.

Training batch ``i`` is a pure function of ``(seed, i)``: epoch ``e = i // steps_per_epoch``
visits the samples in a permutation drawn from a generator seeded by ``(seed, e)`` (the
last incomplete batch is dropped), and the augmentation of batch ``i`` comes from a
generator seeded by ``(seed, i)``. A run resumed at ``start_iteration=k`` therefore sees
exactly the batches an uninterrupted run sees from ``k`` on.

``batch_size`` is the *global* batch. With ``world_size`` processes, rank ``r`` yields the
contiguous slice ``[r·B/W, (r+1)·B/W)`` of the global batch, augmented with the parameters
drawn for the global batch, so the ranks' slices concatenated in rank order are the batch
a single process would train on.

Batches are uint8 N×3×S×S on the training device (channels_last memory when asked for): the
float conversion and normalization run where the model runs, through ``Normalize`` (the one
place that normalizes), which the training loop and evaluation apply. With ``mean`` and ``std``
the pipelines apply it themselves and hand out normalized float32 batches instead.

Evaluation batches cover every sample once, in order, the last partial batch included; with
``world_size`` processes rank ``r`` covers the contiguous shard
``[r·N//W, (r+1)·N//W)`` in batches of ``batch_size`` (per process), so gathering the ranks'
outputs in rank order restores the dataset order. Shards differ in length by at most one
sample.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnets.devices import default_num_workers
from resnets.errors import UserError

from .crops import EncodedImage, center_crop_box, random_resized_crop_box
from .randaugment import TFRandAugment
from .sources import EncodedSplit, Split, TensorSplit

# "crop" (no mirroring) is for data whose classes are not mirror-symmetric, such as digits.
AUGMENTATIONS = ("crop-flip", "crop", "none")
CROP_PADDING = 4  # pixels of zero padding around tensor images before the random crop
EVAL_CROP_FRACTION = 0.875  # folder images: resize the shorter side to size/0.875, then center-crop

# Independent random streams derived from the one training seed.
_PERMUTATION_STREAM = 1
_AUGMENTATION_STREAM = 2


def _derive_seed(seed: int, stream: int, counter: int) -> int:
    words = np.random.SeedSequence([seed % 2**64, stream, counter]).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) & 0x7FFF_FFFF) << 32


def _generator(seed: int, stream: int, counter: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(seed, stream, counter))


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch of every epoch is dropped)."""
    return _full_batches(len(split), batch_size)


def _full_batches(n: int, batch_size: int) -> int:
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}.")
    if n < batch_size:
        raise UserError(
            f"--batch-size {batch_size} is larger than the {n} training images, so an epoch has no "
            f"complete batch. Use a batch size of at most {n}."
        )
    return n // batch_size


class _Schedule:
    """Which samples global batch ``i`` holds, and the generator for its augmentation."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size % world_size:
            raise UserError(
                f"--batch-size {batch_size} (the global batch) must be divisible by the {world_size} processes, "
                f"so that each process gets the same share."
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps = _full_batches(n, batch_size)
        share = batch_size // world_size
        self.local = slice(rank * share, (rank + 1) * share)
        self._epoch, self._permutation = -1, None

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._epoch = epoch
            self._permutation = torch.randperm(self.n, generator=_generator(self.seed, _PERMUTATION_STREAM, epoch))
        return self._permutation

    def global_indices(self, iteration: int) -> torch.Tensor:
        epoch, step = divmod(iteration, self.steps)
        return self.epoch_permutation(epoch)[step * self.batch_size : (step + 1) * self.batch_size]

    def augmentation_generator(self, iteration: int) -> torch.Generator:
        return _generator(self.seed, _AUGMENTATION_STREAM, iteration)


class Normalize:
    """uint8 N×3×S×S batch → float32 ``(x/255 - mean) / std`` on the batch's device, its memory format kept.

    The one place that normalizes: the training loop and evaluation apply it to the pipelines'
    uint8 batches where the model runs, so the CPU-side pipeline stops at uint8 (a quarter of
    the bytes to copy to the device, and no float work on the CPU when a GPU trains).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        device = torch.device(device)
        self.scale = (1 / (255 * std)).to(device=device, dtype=torch.float32)
        self.shift = (-mean / std).to(device=device, dtype=torch.float32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        x = images.to(torch.float32)  # keeps the memory format of `images`
        return x.mul_(self.scale).add_(self.shift)

    def batches(self, stream: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 x, y) batches → (normalized x, y)."""
        for images, labels in stream:
            yield self(images), labels


def _layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    # On uint8, before normalization: the layout copy moves a quarter of the bytes a float one would.
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _maybe_normalized(stream, mean, std, device):
    if mean is None and std is None:
        return stream
    if mean is None or std is None:
        raise ValueError("give both mean and std (normalized float32 batches) or neither (uint8 batches)")
    return Normalize(mean, std, device).batches(stream)


def _copy_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()  # lets the copy overlap with queued GPU work
    return tensor.to(device, non_blocking=True)


def _crop_flip(
    images: torch.Tensor, indices: torch.Tensor, params: torch.Tensor, padding: int, channels_last: bool
) -> torch.Tensor:
    """Zero-pad, random-crop back to size and maybe mirror each selected image, in one gather.

    ``params`` is 3×b: crop offsets (rows, columns) into the padded image and a flip flag.
    The padded images are never materialized: positions that fall into the padding read a
    clamped pixel and are zeroed afterwards.
    """
    _, channels, height, width = images.shape
    device = images.device
    offset_rows, offset_cols, flip = params[0], params[1], params[2].bool()
    row_range = torch.arange(height, device=device)
    col_range = torch.arange(width, device=device)
    rows = offset_rows[:, None] - padding + row_range
    cols = offset_cols[:, None] - padding + torch.where(flip[:, None], width - 1 - col_range, col_range)
    rows_inside = (rows >= 0) & (rows < height)
    cols_inside = (cols >= 0) & (cols < width)
    rows, cols = rows.clamp_(0, height - 1), cols.clamp_(0, width - 1)
    channel = torch.arange(channels, device=device)
    if channels_last:
        # Gathering in N×H×W×C order and permuting yields a channels_last tensor without a copy.
        crops = images[indices[:, None, None, None], channel, rows[:, :, None, None], cols[:, None, :, None]]
        crops.mul_(rows_inside[:, :, None, None] & cols_inside[:, None, :, None])
        return crops.permute(0, 3, 1, 2)
    crops = images[indices[:, None, None, None], channel[:, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    crops.mul_(rows_inside[:, None, :, None] & cols_inside[:, None, None, :])
    return crops


def _check_augment(augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise UserError(f"Unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)}.")


def train_batches(
    split: Split,
    *,
    batch_size: int,
    start_iteration: int,
    seed: int,
    device: torch.device | str,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: str = "crop-flip",
    randaugment_magnitude: int | None = None,
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Infinite (x, y) training batches from global iteration ``start_iteration`` on (module doc).

    Tensor data: ``augment="crop-flip"`` pads by 4 zero pixels, crops back to ``image_size``
    at a random offset and mirrors half the images, batched on ``device``. Folder data:
    ``"crop-flip"`` is RandomResizedCrop(image_size) + horizontal flip (+ RandAugment with
    2 ops of ``randaugment_magnitude`` when given); ``"none"`` is the evaluation resize and
    center crop. x is uint8 N×3×S×S on ``device`` (channels_last memory when asked for), or,
    with ``mean`` and ``std``, float32 normalized by ``Normalize``; y is int64.
    """
    _check_augment(augment)
    if start_iteration < 0:
        raise ValueError(f"start_iteration must be ≥ 0, got {start_iteration}")
    device = torch.device(device)
    schedule = _Schedule(len(split), batch_size, seed, rank, world_size)
    if isinstance(split, TensorSplit):
        if randaugment_magnitude is not None:
            raise UserError(
                "RandAugment (--randaugment-magnitude) applies to datasets read from image folders (imagenet); "
                "this dataset is held in memory and uses --augment crop-flip, crop or none."
            )
        stream = _tensor_train_batches(split, schedule, start_iteration, device, image_size, augment, channels_last)
    else:
        stream = _folder_train_batches(
            split, schedule, start_iteration, device, image_size, augment, randaugment_magnitude, channels_last,
            num_workers,
        )
    return _maybe_normalized(stream, mean, std, device)


def _check_tensor_size(split: TensorSplit, image_size: int) -> None:
    if split.images.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"the split holds {tuple(split.images.shape[-2:])} images but image_size is {image_size}; "
            "load_dataset(image_size=...) resizes tensor datasets"
        )


def _tensor_train_batches(
    split: TensorSplit, schedule: _Schedule, start_iteration: int, device: torch.device,
    image_size: int, augment: str, channels_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    _check_tensor_size(split, image_size)
    images, labels = split.on_device(device)
    permutation_epoch, permutation = -1, None
    iteration = start_iteration
    while True:
        epoch, step = divmod(iteration, schedule.steps)
        if epoch != permutation_epoch:
            permutation_epoch = epoch
            permutation = _copy_to_device(schedule.epoch_permutation(epoch), device)
        start = step * schedule.batch_size
        indices = permutation[start : start + schedule.batch_size][schedule.local]
        if augment in ("crop-flip", "crop"):
            generator = schedule.augmentation_generator(iteration)
            span = 2 * CROP_PADDING + 1
            params = torch.stack([
                torch.randint(0, span, (schedule.batch_size,), generator=generator),
                torch.randint(0, span, (schedule.batch_size,), generator=generator),
                torch.randint(0, 2, (schedule.batch_size,), generator=generator),
            ])[:, schedule.local]
            if augment == "crop":
                params[2].zero_()
            batch = _crop_flip(images, indices, _copy_to_device(params, device), CROP_PADDING, channels_last)
        else:
            batch = _layout(images.index_select(0, indices), channels_last)
        yield batch, labels.index_select(0, indices)
        iteration += 1


# ----------------------------------------------------------------------------- folder data


class _Unreadable:
    """Returned by a worker instead of a batch, so the main process can raise a clean UserError."""

    def __init__(self, message: str) -> None:
        self.message = message


@contextmanager
def _seeded_cpu_rng(seed: int):
    # torch's global CPU generator drives the transforms; with num_workers=0 it is the training
    # process's own, so its state is put back afterwards.
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class _EncodedImages(Dataset):
    """Decodes and crops one sample of an ``EncodedSplit`` to uint8 3×S×S; items are an index or (index, seed).

    It reads the split only through ``read_encoded``, ``describe`` and ``labels``, so image
    folders and prepared shards go through the same decoding and augmentation.
    """

    def __init__(self, split: EncodedSplit, transform) -> None:
        self.split = split
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        index, sample_seed = item if isinstance(item, tuple) else (item, None)
        try:
            data, name = self.split.read_encoded(index), self.split.describe(index)
            if sample_seed is None:
                image = self.transform(data, name)
            else:
                with _seeded_cpu_rng(sample_seed):
                    image = self.transform(data, name)
        except UserError as e:
            return _Unreadable(str(e))
        return image, int(self.labels[index])


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | _Unreadable:
    for item in items:
        if isinstance(item, _Unreadable):
            return item
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)


class _TrainBatchSampler:
    """Infinite stream of this rank's (index, sample seed) lists, from ``start_iteration`` on."""

    def __init__(self, schedule: _Schedule, start_iteration: int) -> None:
        self.schedule, self.start_iteration = schedule, start_iteration

    def __iter__(self):
        iteration = self.start_iteration
        while True:
            indices = self.schedule.global_indices(iteration)
            # One seed per position of the global batch: a sample's augmentation does not
            # depend on which rank or worker processes it.
            sample_seeds = torch.randint(
                0, 2**62, (self.schedule.batch_size,), generator=self.schedule.augmentation_generator(iteration)
            )
            local = self.schedule.local
            yield list(zip(indices[local].tolist(), sample_seeds[local].tolist()))
            iteration += 1


def eval_image_transform(image_size: int) -> Callable[[str | os.PathLike], torch.Tensor]:
    """An image file → uint8 3×S×S exactly as ``eval_batches`` crops folder images (``resnets predict``)."""
    crop = _EncodedCrop(image_size, random_crop=False, flip=False)

    def load(path: str | os.PathLike) -> torch.Tensor:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"Could not read image {path} ({e.strerror or e}).") from e
        return crop(data, str(path))

    return load


class _EncodedCrop:
    """Encoded bytes → contiguous uint8 3×S×S tensor: RandomResizedCrop (+ flip) or the evaluation crop.

    Decodes only as finely as the crop needs (see ``crops``). ``transforms`` are tensor
    transforms applied to the 3×S×S crop afterwards (RandAugment).
    """

    def __init__(self, image_size: int, random_crop: bool, flip: bool, transforms: Sequence = ()) -> None:
        self.image_size, self.random_crop, self.flip = image_size, random_crop, flip
        self.transforms = list(transforms)

    def __call__(self, data: bytes, name: str) -> torch.Tensor:
        image = EncodedImage(data, name)
        width, height = image.size
        if self.random_crop:
            box = random_resized_crop_box(width, height)
        else:
            box = center_crop_box(width, height, round(self.image_size / EVAL_CROP_FRACTION), self.image_size)
        # Drawn like torchvision's RandomHorizontalFlip, after the crop's own draws.
        flip = self.flip and bool(torch.rand(1) < 0.5)
        crop = image.crop(box, (self.image_size, self.image_size), flip=flip)
        for transform in self.transforms:
            crop = transform(crop)
        return crop.contiguous()


def _train_transform(image_size: int, augment: str, randaugment_magnitude: int | None) -> _EncodedCrop:
    if augment == "none":
        return _EncodedCrop(image_size, random_crop=False, flip=False)
    # TF's ops and 0-10 magnitude scale, as the ResNet-RS configs give it.
    extra = [] if randaugment_magnitude is None else [TFRandAugment(num_ops=2, magnitude=randaugment_magnitude)]
    return _EncodedCrop(image_size, random_crop=True, flip=augment == "crop-flip", transforms=extra)


def _folder_loader(dataset: _EncodedImages, device: torch.device, num_workers: int | None, **batching) -> DataLoader:
    if num_workers is None:
        num_workers = default_num_workers()
    return DataLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
        # Its own generator: the loader draws a base seed, which must not advance the global RNG.
        generator=torch.Generator().manual_seed(0),
        **batching,
    )


def _device_batches(loader: DataLoader, device: torch.device, channels_last: bool, image_hook=None,
                    first_index: int = 0):
    index = first_index
    for batch in loader:
        if isinstance(batch, _Unreadable):
            raise UserError(batch.message)
        images, labels = batch  # workers send contiguous uint8 N×3×S×S
        if image_hook is not None:
            images = image_hook(images, range(index, index + len(labels)))
        index += len(labels)
        yield (
            _layout(images.to(device, non_blocking=True), channels_last),
            labels.to(device, non_blocking=True),
        )


def _folder_train_batches(
    split: EncodedSplit, schedule: _Schedule, start_iteration: int, device: torch.device, image_size: int, augment: str, randaugment_magnitude: int | None, channels_last: bool, num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    dataset = _EncodedImages(split, _train_transform(image_size, augment, randaugment_magnitude))
    loader = _folder_loader(dataset, device, num_workers, batch_sampler=_TrainBatchSampler(schedule, start_iteration))
    return _device_batches(loader, device, channels_last)


def eval_batches(
    split: Split,
    *,
    batch_size: int,
    device: torch.device | str,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels_last: bool = False,
    num_workers: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    image_hook: Callable[[torch.Tensor, range], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of ``split`` in order, unaugmented, as (x, y) batches: x uint8, or normalized
    float32 with ``mean`` and ``std`` (module doc).

    Folder images are resized (shorter side to round(image_size/0.875)) and center-cropped.
    ``image_hook(images, indices)``, when given, receives each batch as uint8 N×3×S×S on the
    CPU with the samples' indices in the split and returns the images to use (e.g. corrupted
    ones); ``num_workers`` None means ``devices.default_num_workers()``: the cores divided
    among the machine's processes (LOCAL_WORLD_SIZE).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    device = torch.device(device)
    first, last = rank * len(split) // world_size, (rank + 1) * len(split) // world_size
    if isinstance(split, TensorSplit):
        stream = _tensor_eval_batches(split, first, last, batch_size, device, image_size, channels_last, image_hook)
    else:
        dataset = _EncodedImages(split, _EncodedCrop(image_size, random_crop=False, flip=False))
        shard = torch.utils.data.Subset(dataset, range(first, last))
        loader = _folder_loader(shard, device, num_workers, batch_size=batch_size, shuffle=False)
        stream = _device_batches(loader, device, channels_last, image_hook, first)
    return _maybe_normalized(stream, mean, std, device)


def _tensor_eval_batches(
    split: TensorSplit, first: int, last: int, batch_size: int, device: torch.device,
    image_size: int, channels_last: bool, image_hook=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    _check_tensor_size(split, image_size)
    images, labels = split.on_device(device)
    for start in range(first, last, batch_size):
        stop = min(start + batch_size, last)
        if image_hook is None:
            batch = images[start:stop]
        else:
            batch = _copy_to_device(image_hook(split.images[start:stop], range(start, stop)), device)
        yield _layout(batch, channels_last), labels[start:stop]
