"""Tiny datasets written in their publishers' real formats, shared by the tests."""
from __future__ import annotations

import pickle

import numpy as np
from PIL import Image


def planar_rows(images: np.ndarray) -> np.ndarray:
    """N×H×W×3 → the publishers' rows: whole R plane, then G, then B."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def random_images(rng, n, size):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_jpeg(path, array, quality=95):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "JPEG", quality=quality)


def solid(color, height=64, width=64):
    return np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3)).copy()


def write_cifar10(root, per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = random_images(rng, per_batch, 32)
        batch_labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": planar_rows(batch), b"labels": batch_labels}, f)
        images.append(batch)
        labels.append(batch_labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    return np.concatenate(images[:5]), np.concatenate(labels[:5]), images[5], np.array(labels[5])


def write_downsampled(folder, name, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, data=planar_rows(images), labels=np.asarray(labels))


TINY_COLORS = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]


def write_tinyimagenet(root, per_class=4):
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    for wnid, color in zip(wnids, TINY_COLORS):
        for k in range(per_class):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", solid(color))
    annotations = []
    for k, label in enumerate([2, 0, 1, 0]):
        write_jpeg(root / "val" / "images" / f"val_{k}.JPEG", solid(TINY_COLORS[label]))
        annotations.append(f"val_{k}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    write_jpeg(root / "test" / "images" / "test_0.JPEG", solid((0, 0, 0)))
    return wnids


def write_image_folders(root, folders, per_folder=3, size=(24, 20), seed=6):
    rng = np.random.default_rng(seed)
    for name in folders:
        for k in range(per_folder):
            write_jpeg(root / name / f"img_{k}.JPEG", rng.integers(0, 256, size + (3,), dtype=np.uint8))


def write_npy(root, n_train=30, n_test=8, size=12, seed=7):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": random_images(rng, n_train, size),
        "train_labels": rng.integers(0, 5, n_train),
        "test_images": random_images(rng, n_test, size),
        "test_labels": rng.integers(0, 5, n_test),
    }
    arrays["train_labels"][0] = 6  # highest label: 7 classes
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    return arrays
