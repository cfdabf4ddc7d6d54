"""Data sources in their publishers' real formats (made tiny under tmp_path) and the batch pipelines."""
from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import (
    DATASETS,
    FolderSplit,
    TensorSplit,
    eval_batches,
    load_dataset,
    steps_per_epoch,
    train_batches,
)
from resnets.errors import UserError

from formats import (
    planar_rows,
    random_images,
    solid,
    write_cifar10,
    write_downsampled,
    write_image_folders,
    write_jpeg,
    write_npy,
    write_tinyimagenet,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_decodes_planar_pixels_and_holds_out_the_tail(tmp_path):
    train_images, train_labels, test_images, test_labels = write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", tmp_path)
    assert (bundle.num_classes, bundle.image_size) == (10, 32)
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.class_names[0] == "airplane"
    # 100 training images: the tail round(100 × 0.1808) = 18 is the validation set.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (82, 18, 20)
    expected = torch.from_numpy(train_images).permute(0, 3, 1, 2)
    assert torch.equal(bundle.train.images, expected[:82])
    assert torch.equal(bundle.val.images, expected[82:])
    assert torch.equal(bundle.train.labels, torch.from_numpy(train_labels[:82]).long())
    assert torch.equal(bundle.val.labels, torch.from_numpy(train_labels[82:]).long())
    assert torch.equal(bundle.test.images, torch.from_numpy(test_images).permute(0, 3, 1, 2))
    assert torch.equal(bundle.test.labels, torch.from_numpy(test_labels).long())
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.is_contiguous()


def test_cifar_planes_are_red_green_blue(tmp_path):
    write_cifar10(tmp_path)
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, :, 0] = 255  # red top row
    image[:, 0, 1] = 200  # green left column
    image[31, 31, 2] = 77  # one blue pixel, bottom right
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        record = pickle.load(f, encoding="bytes")
    record[b"data"][0] = planar_rows(image[None])[0]
    with open(path, "wb") as f:
        pickle.dump(record, f)
    decoded = load_dataset("cifar10", tmp_path).train.images[0]
    assert decoded[0, 0].tolist() == [255] * 32 and decoded[0, 1:].sum() == 0
    assert decoded[1, :, 0].tolist() == [200] * 32 and decoded[1, :, 1:].sum() == 0
    assert decoded[2, 31, 31] == 77 and decoded[2].sum() == 77


def test_cifar_val_size_override_and_no_val(tmp_path):
    write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", tmp_path, val_size=30)
    assert (len(bundle.train), len(bundle.val)) == (70, 30)
    bundle = load_dataset("cifar10", tmp_path, val_size=0)
    assert len(bundle.train) == 100 and bundle.val is None
    with pytest.raises(UserError, match="--val-size"):
        load_dataset("cifar10", tmp_path, val_size=100)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for name, n in (("train", 50), ("test", 10)):
        images = random_images(rng, n, 32)
        fine = rng.integers(0, 100, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": planar_rows(images), b"fine_labels": fine, b"coarse_labels": [k // 5 for k in fine]}, f)
        written[name] = (images, fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{k}".encode() for k in range(100)], b"coarse_label_names": []}, f)
    bundle = load_dataset("cifar100", tmp_path)
    assert bundle.num_classes == 100 and bundle.class_names[7] == "class7"
    assert bundle.mean == (0.5071, 0.4865, 0.4409)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (41, 9, 10)
    assert bundle.train.labels.tolist() + bundle.val.labels.tolist() == written["train"][1]
    assert torch.equal(bundle.test.images, torch.from_numpy(written["test"][0]).permute(0, 3, 1, 2))


def test_cifar_missing_folder_names_the_expected_file(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py/data_batch_1.*--download"):
        load_dataset("cifar10", tmp_path)


def test_cifar_label_out_of_range_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        record = pickle.load(f, encoding="bytes")
    record[b"labels"][3] = 10
    with open(path, "wb") as f:
        pickle.dump(record, f)
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar_download_uses_torchvision_then_reads_the_files(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_cifar10(root, download):
        calls.append((root, download))
        write_cifar10(tmp_path / "new")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    bundle = load_dataset("cifar10", tmp_path / "new", download=True)
    assert calls == [(str(tmp_path / "new"), True)] and len(bundle.test) == 20


def test_cifar_download_failure_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, download):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(UserError, match="Could not download CIFAR-100.*offline"):
        load_dataset("cifar100", tmp_path, download=True)


# ----------------------------------------------------------------------------- Downsampled ImageNet


def test_imagenet32_in_the_publishers_subfolders(tmp_path):
    rng = np.random.default_rng(2)
    batches = [random_images(rng, 6, 32) for _ in range(2)]
    write_downsampled(tmp_path / "Imagenet32_train_npz", "train_data_batch_1.npz", batches[0], [1, 2, 3, 1000, 5, 6])
    write_downsampled(tmp_path / "Imagenet32_train_npz", "train_data_batch_2.npz", batches[1], [7, 8, 9, 10, 11, 12])
    val_images = random_images(rng, 4, 32)
    write_downsampled(tmp_path / "Imagenet32_val_npz", "val_data.npz", val_images, [1, 1, 2, 3])
    with pytest.warns(UserWarning, match="train_data_batch_3.npz"):
        bundle = load_dataset("imagenet32", tmp_path)
    assert (bundle.num_classes, bundle.image_size, bundle.test) == (1000, 32, None)
    assert bundle.mean == (0.485, 0.456, 0.406)
    assert bundle.train.labels.tolist() == [0, 1, 2, 999, 4, 5, 6, 7, 8, 9, 10, 11]
    assert torch.equal(bundle.train.images, torch.from_numpy(np.concatenate(batches)).permute(0, 3, 1, 2))
    assert bundle.val.labels.tolist() == [0, 0, 1, 2]
    assert torch.equal(bundle.val.images, torch.from_numpy(val_images).permute(0, 3, 1, 2))


def test_imagenet64_files_directly_in_data_dir(tmp_path):
    rng = np.random.default_rng(3)
    train = random_images(rng, 5, 64)
    for k in range(1, 11):
        write_downsampled(tmp_path, f"train_data_batch_{k}.npz", train, [1, 2, 3, 4, 5])
    write_downsampled(tmp_path, "val_data.npz", train[:2], [5, 4])
    bundle = load_dataset("imagenet64", tmp_path)
    assert bundle.image_size == 64 and bundle.train.images.shape == (50, 3, 64, 64)
    assert torch.equal(bundle.train.images[45:], torch.from_numpy(train).permute(0, 3, 1, 2))
    assert bundle.val.labels.tolist() == [4, 3]
    assert load_dataset("imagenet64", tmp_path, val_size=0).val is None


@pytest.mark.parametrize("bad_label", [0, 1001])
def test_imagenet32_label_out_of_range_names_the_file(tmp_path, bad_label):
    rng = np.random.default_rng(4)
    write_downsampled(tmp_path, "train_data_batch_1.npz", random_images(rng, 3, 32), [1, bad_label, 2])
    write_downsampled(tmp_path, "val_data.npz", random_images(rng, 2, 32), [1, 2])
    with pytest.warns(UserWarning), pytest.raises(UserError, match="train_data_batch_1.npz"):
        load_dataset("imagenet32", tmp_path)


def test_imagenet64_rejects_32_pixel_files_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="train_data_batch_1.npz"):
        load_dataset("imagenet64", tmp_path)
    rng = np.random.default_rng(5)
    write_downsampled(tmp_path, "train_data_batch_1.npz", random_images(rng, 3, 32), [1, 2, 3])
    with pytest.raises(UserError, match="val_data.npz"):
        load_dataset("imagenet64", tmp_path)
    write_downsampled(tmp_path, "val_data.npz", random_images(rng, 2, 32), [1, 2])
    with pytest.warns(UserWarning), pytest.raises(UserError, match="ImageNet32"):
        load_dataset("imagenet64", tmp_path)


# ----------------------------------------------------------------------------- TinyImageNet


def dominant_channel(images):
    return images.float().mean(dim=(2, 3)).argmax(dim=1)


def test_tinyimagenet_64_and_32_pixels(tmp_path):
    write_tinyimagenet(tmp_path / "tiny-imagenet-200")
    bundle = load_dataset("tinyimagenet", tmp_path)
    assert (bundle.num_classes, bundle.image_size) == (3, 64)
    assert bundle.class_names == ["goldfish, Carassius auratus", "European fire salamander", "n01641577"]
    # 12 training images: the tail round(12 × 0.1808) = 2 is the validation set; the
    # official validation images are the test set.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 2, 4)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.shape[1:] == (3, 64, 64) and split.images.dtype == torch.uint8
        assert torch.equal(dominant_channel(split.images), split.labels)  # class k is painted colour k
    assert bundle.test.labels.tolist() == [2, 0, 1, 0]
    assert sorted(bundle.train.labels.tolist() + bundle.val.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    small = load_dataset("tinyimagenet", tmp_path / "tiny-imagenet-200", image_size=32)
    assert small.image_size == 32 and small.train.images.shape == (10, 3, 32, 32)
    assert torch.equal(dominant_channel(small.test.images), small.test.labels)


def test_tinyimagenet_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    write_tinyimagenet(tmp_path / "tiny-imagenet-200")
    first = load_dataset("tinyimagenet", tmp_path)
    assert list((tmp_path / "cache").glob("tinyimagenet-*-64px.npz"))

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr("resnets.data.sources.folders.decode_images", must_not_decode)
    second = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_tinyimagenet_grey_jpeg_becomes_rgb(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tinyimagenet(root)
    Image.fromarray(np.full((64, 64), 90, np.uint8), mode="L").save(root / "val" / "images" / "val_1.JPEG", "JPEG")
    bundle = load_dataset("tinyimagenet", tmp_path)
    grey = bundle.test.images[1].int()
    assert grey.shape == (3, 64, 64) and (grey - 90).abs().max() <= 2


def test_tinyimagenet_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="tiny-imagenet-200/wnids.txt"):
        load_dataset("tinyimagenet", tmp_path)
    root = tmp_path / "tiny-imagenet-200"
    write_tinyimagenet(root)
    broken = root / "train" / "n01629819" / "images" / "n01629819_2.JPEG"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(UserError, match="n01629819_2.JPEG"):
        load_dataset("tinyimagenet", tmp_path)


# ----------------------------------------------------------------------------- ImageNet folders


def test_imagenet_folders_share_the_sorted_wnid_order(tmp_path):
    wnids = ["n02", "n01", "n10"]
    write_image_folders(tmp_path / "train", wnids, per_folder=3)
    write_image_folders(tmp_path / "val", wnids, per_folder=2)
    bundle = load_dataset("imagenet", tmp_path)
    assert (bundle.num_classes, bundle.image_size, bundle.test) == (3, 224, None)
    assert bundle.class_names == ["n01", "n02", "n10"]
    assert isinstance(bundle.train, FolderSplit) and len(bundle.train) == 9 and len(bundle.val) == 6
    for path, label in bundle.train.samples + bundle.val.samples:
        assert bundle.class_names[label] in path


def test_imagenet_user_errors(tmp_path):
    with pytest.raises(UserError, match="train"):
        load_dataset("imagenet", tmp_path)
    write_image_folders(tmp_path / "train", ["n01", "n02"])
    write_image_folders(tmp_path / "val", ["n01", "n03"])
    with pytest.raises(UserError, match="only in train: n02; only in val: n03"):
        load_dataset("imagenet", tmp_path)
    flat = tmp_path / "flat"
    write_image_folders(flat / "train", ["n01"])
    write_jpeg(flat / "val" / "ILSVRC2012_val_00000001.JPEG", solid((1, 2, 3), 8, 8))
    with pytest.raises(UserError, match="directly"):
        load_dataset("imagenet", flat)


def test_imagenet_v2_folders_are_class_indices_not_text(tmp_path):
    numbered = tmp_path / "imagenetv2-matched-frequency-format-val"
    write_image_folders(numbered, [str(k) for k in range(11)], per_folder=1)
    for data_dir in (tmp_path, numbered):
        bundle = load_dataset("imagenet-v2", data_dir)
        assert bundle.train is None and bundle.val is None and bundle.num_classes == 1000
        labels = {path.split("/")[-2]: label for path, label in bundle.test.samples}
        assert labels == {str(k): k for k in range(11)}  # text order would map "10" to 2
    (numbered / "extra").mkdir()
    with pytest.raises(UserError, match="extra"):
        load_dataset("imagenet-v2", numbered)
    with pytest.raises(UserError, match="0 … 999"):
        load_dataset("imagenet-v2", tmp_path / "imagenetv2-matched-frequency-format-val" / "0")


# ----------------------------------------------------------------------------- npy, digits, synthetic


def test_npy_layout(tmp_path):
    arrays = write_npy(tmp_path)
    bundle = load_dataset("npy", tmp_path)
    assert (bundle.num_classes, bundle.image_size) == (7, 12)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (25, 5, 8)
    assert torch.equal(bundle.train.images, torch.from_numpy(arrays["train_images"][:25]).permute(0, 3, 1, 2))
    assert bundle.test.labels.tolist() == arrays["test_labels"].tolist()
    expected_mean = arrays["train_images"][:25].reshape(-1, 3).mean(0) / 255
    assert np.allclose(bundle.mean, expected_mean)
    assert load_dataset("npy", tmp_path, num_classes=10).num_classes == 10
    with pytest.raises(UserError, match="train_labels.npy"):
        load_dataset("npy", tmp_path, num_classes=5)
    resized = load_dataset("npy", tmp_path, image_size=8)
    assert resized.train.images.shape == (25, 3, 8, 8) and resized.test.images.shape == (8, 3, 8, 8)


def test_npy_validation(tmp_path):
    with pytest.raises(UserError, match="train_images.npy"):
        load_dataset("npy", tmp_path)
    write_npy(tmp_path)
    np.save(tmp_path / "test_labels.npy", np.zeros(3, np.int64))
    with pytest.raises(UserError, match="test_labels.npy has 3 labels"):
        load_dataset("npy", tmp_path)
    np.save(tmp_path / "train_images.npy", np.zeros((30, 12, 12, 3), np.float32))
    with pytest.raises(UserError, match="train_images.npy is float32"):
        load_dataset("npy", tmp_path)


def test_digits_fixed_split():
    bundle = load_dataset("digits")
    sizes = (len(bundle.train), len(bundle.val), len(bundle.test))
    assert sum(sizes) == 1797 and sizes == (1257, 180, 360)
    assert (bundle.num_classes, bundle.image_size) == (10, 32)
    assert bundle.train.images.shape == (1257, 3, 32, 32) and bundle.train.images.dtype == torch.uint8
    assert torch.equal(bundle.train.images[:, 0], bundle.train.images[:, 2])  # grey in all 3 channels
    assert int(bundle.train.images.max()) == 255
    for split in (bundle.train, bundle.val, bundle.test):
        assert set(split.labels.tolist()) == set(range(10))  # stratified
    again = load_dataset("digits")
    assert torch.equal(again.test.images, bundle.test.images) and torch.equal(again.val.labels, bundle.val.labels)
    everything = load_dataset("digits", val_size=0, image_size=16)
    assert everything.val is None and len(everything.train) == 1437 and everything.image_size == 16


def test_synthetic():
    bundle = load_dataset("synthetic")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10_000, 1_000, 1_000)
    assert (bundle.num_classes, bundle.image_size) == (10, 32)
    small = load_dataset("synthetic", image_size=8, num_classes=3, synthetic_size=(50, 0, 5))
    assert small.val is None and small.train.images.shape == (50, 3, 8, 8)
    assert int(small.train.labels.max()) <= 2
    assert torch.equal(small.train.images, load_dataset("synthetic", image_size=8, num_classes=3, synthetic_size=(50, 0, 5)).train.images)


def test_unknown_dataset_and_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="cifar10, cifar100"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="--data-dir is required"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("imagenet", tmp_path / "nowhere")
    assert tuple(DATASETS) == ("digits", "cifar10", "cifar100", "tinyimagenet", "imagenet32", "imagenet64", "npy", "imagenet", "imagenet-v2", "folder", "synthetic")


# ----------------------------------------------------------------------------- pipelines: tensor data

NO_NORMALIZATION = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # x equals the uint8 pixels


def indexed_split(n=20, size=8, seed=8):
    """Random images whose label is their own index, so a batch tells where each image came from."""
    generator = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator), torch.arange(n))


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def tensor_batches(split, start, **overrides):
    options = dict(batch_size=4, start_iteration=start, seed=11, device="cpu", image_size=split.images.shape[-1], **NO_NORMALIZATION)
    options.update(overrides)
    return train_batches(split, **options)


@pytest.mark.parametrize("channels_last", [False, True])
def test_tensor_train_batches_resume_exactly(channels_last):
    split = indexed_split()
    straight = take(tensor_batches(split, 0, channels_last=channels_last), 10)  # 2 epochs of 5 steps
    resumed = take(tensor_batches(split, 5, channels_last=channels_last), 5)
    for (x, y), (x2, y2) in zip(straight[5:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for epoch in range(2):  # every sample once per epoch
        seen = torch.cat([y for _, y in straight[5 * epoch : 5 * epoch + 5]])
        assert sorted(seen.tolist()) == list(range(20))


def test_tensor_train_batches_ranks_slice_the_global_batch():
    split = indexed_split()
    whole = take(tensor_batches(split, 3, batch_size=8), 4)
    ranks = [take(tensor_batches(split, 3, batch_size=8, rank=r, world_size=4), 4) for r in range(4)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(4)]), x)
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(4)]), y)
    with pytest.raises(UserError, match="divisible"):
        tensor_batches(split, 0, batch_size=6, world_size=4)


def reference_crops(image, padding=4):
    """Every padded crop and mirrored padded crop of one C×S×S image, computed one by one."""
    size = image.shape[-1]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            yield crop
            yield crop.flip(-1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_flip_output_is_a_padded_crop_and_random(channels_last):
    split = indexed_split(n=16)
    x, y = next(tensor_batches(split, 0, batch_size=16, channels_last=channels_last))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    pixels = x.round().to(torch.uint8)
    for image, label in zip(pixels, y):
        assert any(torch.equal(image, crop) for crop in reference_crops(split.images[label]))
    # Not the identity: across 16 images some are shifted into the padding or mirrored.
    assert not all(torch.equal(image, split.images[label]) for image, label in zip(pixels, y))
    again, _ = next(tensor_batches(split, 0, batch_size=16, channels_last=channels_last))
    assert torch.equal(x, again)  # same (seed, iteration)
    batches = take(tensor_batches(split, 0, batch_size=16), 3)  # one batch per epoch: same samples,
    orders = [torch.argsort(yb) for _, yb in batches]  # different crops
    sorted_x = [xb[o] for (xb, _), o in zip(batches, orders)]
    assert not torch.equal(sorted_x[0], sorted_x[1]) and not torch.equal(sorted_x[1], sorted_x[2])
    other_seed, _ = next(tensor_batches(split, 0, batch_size=16, seed=12))
    assert not torch.equal(other_seed, x)


def test_tensor_normalization_and_no_augmentation():
    split = indexed_split(n=8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x, y = next(tensor_batches(split, 0, batch_size=8, augment="none", mean=mean, std=std))
    expected = (split.images[y].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    with pytest.raises(UserError, match="augmentation"):
        tensor_batches(split, 0, augment="mixup")


def test_steps_per_epoch_and_batch_too_large():
    split = indexed_split(n=20)
    assert steps_per_epoch(split, 6) == 3
    with pytest.raises(UserError, match="--batch-size 21"):
        steps_per_epoch(split, 21)


@pytest.mark.parametrize("world_size", [1, 3])
def test_tensor_eval_batches_cover_every_sample_once(world_size):
    split = indexed_split(n=10)
    shards = [
        list(eval_batches(split, batch_size=3, device="cpu", image_size=8, rank=r, world_size=world_size, **NO_NORMALIZATION))
        for r in range(world_size)
    ]
    labels = torch.cat([y for shard in shards for _, y in shard])
    images = torch.cat([x for shard in shards for x, _ in shard])
    assert labels.tolist() == list(range(10))
    assert torch.equal(images.round().to(torch.uint8), split.images)
    if world_size == 1:
        assert [len(y) for _, y in shards[0]] == [3, 3, 3, 1]


# ----------------------------------------------------------------------------- pipelines: folder data


@pytest.fixture
def folder_split(tmp_path):
    write_image_folders(tmp_path / "imgs", ["a", "b", "c"], per_folder=4, size=(20, 26))
    samples = [(str(tmp_path / "imgs" / folder / f"img_{k}.JPEG"), label) for label, folder in enumerate("abc") for k in range(4)]
    return FolderSplit(samples)


def folder_batches(split, start, **overrides):
    options = dict(batch_size=4, start_iteration=start, seed=13, device="cpu", image_size=16, num_workers=0, **NO_NORMALIZATION)
    options.update(overrides)
    return train_batches(split, **options)


def test_folder_train_batches_resume_exactly_across_worker_counts(folder_split):
    straight = take(folder_batches(folder_split, 0), 6)  # 2 epochs of 3 steps
    assert straight[0][0].shape == (4, 3, 16, 16) and straight[0][1].dtype == torch.int64
    resumed = take(folder_batches(folder_split, 2, num_workers=2), 4)
    for (x, y), (x2, y2) in zip(straight[2:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(straight[0][0], straight[3][0])


def test_folder_train_batches_ranks_slice_the_global_batch(folder_split):
    whole = take(folder_batches(folder_split, 1, randaugment_magnitude=9), 2)
    ranks = [take(folder_batches(folder_split, 1, randaugment_magnitude=9, rank=r, world_size=2), 2) for r in range(2)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), y)


def test_folder_augmentation_leaves_the_global_rng_alone(folder_split):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(folder_batches(folder_split, 0), 2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_jpeg_is_a_user_error_naming_it(folder_split, num_workers):
    broken = folder_split.samples[5][0]
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8 truncated garbage")
    with pytest.raises(UserError, match=broken) as caught:
        take(folder_batches(folder_split, 0, num_workers=num_workers), 3)
    assert "Traceback" not in str(caught.value)
    with pytest.raises(UserError, match=broken):
        list(eval_batches(folder_split, batch_size=5, device="cpu", image_size=16, num_workers=num_workers, **NO_NORMALIZATION))


def test_folder_eval_batches_cover_every_sample_once(folder_split):
    shards = [
        list(eval_batches(folder_split, batch_size=3, device="cpu", image_size=16, num_workers=0, rank=r, world_size=2, **NO_NORMALIZATION))
        for r in range(2)
    ]
    labels = torch.cat([y for shard in shards for _, y in shard])
    assert labels.tolist() == [label for _, label in folder_split.samples]
    assert [len(y) for _, y in shards[0]] == [3, 3]
    path = folder_split.samples[7][0]
    # Sample 7 = second of rank 1's shard 6..11, cropped as `resnets predict` crops a file (the
    # fidelity of that crop to torchvision's Resize + CenterCrop: tests/test_crops.py).
    from resnets.data.pipelines import eval_image_transform

    got = shards[1][0][0][1].round().to(torch.uint8)
    assert torch.equal(got, eval_image_transform(16)(path))


def test_download_is_only_for_cifar(tmp_path):
    with pytest.raises(UserError, match="--download fetches only cifar10 and cifar100"):
        load_dataset("tinyimagenet", tmp_path, download=True)


def test_downsampled_resolutions_side_by_side_are_told_apart_by_folder_name(tmp_path):
    rng = np.random.default_rng(9)
    for size in (32, 64):
        write_downsampled(tmp_path / f"Imagenet{size}_train_npz", "train_data_batch_1.npz", random_images(rng, 2, size), [1, 2])
        write_downsampled(tmp_path / f"Imagenet{size}_val_npz", "val_data.npz", random_images(rng, 2, size), [3, 4])
    for size in (32, 64):
        with pytest.warns(UserWarning, match="1 of 10"):
            bundle = load_dataset(f"imagenet{size}", tmp_path)
        assert bundle.train.images.shape == (2, 3, size, size) and bundle.val.labels.tolist() == [2, 3]


def test_official_split_sizes():
    from resnets.data.sources import VAL_FRACTION

    assert round(50_000 * VAL_FRACTION) == 9_040 and round(100_000 * VAL_FRACTION) == 18_080


# ----------------------------------------------------------------------------- uint8 batches + Normalize


@pytest.mark.parametrize("channels_last", [False, True])
def test_folder_batches_are_uint8_and_normalize_gives_the_normalized_batches(folder_split, channels_last):
    from resnets.data import Normalize

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    common = dict(batch_size=4, start_iteration=1, seed=13, device="cpu", image_size=16, num_workers=0,
                  channels_last=channels_last)
    raw = take(train_batches(folder_split, **common), 3)
    normalized = take(train_batches(folder_split, mean=mean, std=std, **common), 3)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for (x, y), (xn, yn) in zip(raw, normalized):
        assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=layout)
        assert xn.dtype == torch.float32 and xn.is_contiguous(memory_format=layout)
        assert torch.equal(Normalize(mean, std)(x), xn) and torch.equal(y, yn)  # the same one normalization
        expected = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        assert torch.allclose(xn.double(), expected, atol=1e-5)
    evaluated = next(eval_batches(folder_split, batch_size=4, device="cpu", image_size=16, num_workers=0))[0]
    assert evaluated.dtype == torch.uint8 and evaluated.is_contiguous()


def test_uint8_folder_batches_resume_exactly_across_worker_counts(folder_split):
    common = dict(batch_size=4, seed=13, device="cpu", image_size=16)
    straight = take(train_batches(folder_split, start_iteration=0, num_workers=0, **common), 5)
    resumed = take(train_batches(folder_split, start_iteration=2, num_workers=2, **common), 3)
    for (x, y), (x2, y2) in zip(straight[2:], resumed):
        assert x.dtype == torch.uint8 and torch.equal(x, x2) and torch.equal(y, y2)


def test_mean_without_std_is_refused(folder_split):
    with pytest.raises(ValueError, match="mean and std"):
        next(train_batches(folder_split, batch_size=4, start_iteration=0, seed=1, device="cpu", image_size=16,
                           num_workers=0, mean=(0.5, 0.5, 0.5)))
