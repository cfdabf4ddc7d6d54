"""`resnets prepare`: write a JPEG dataset once into shards that every rank reads by index
(see data/sources/shards.py for the format and why litdata)."""
from __future__ import annotations

import time

from .data import prepare_shards
from .data.sources import PREPARABLE


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, choices=PREPARABLE,
                        help="the dataset to prepare: imagenet (train/ and val/ class folders) or folder "
                             "(torchvision's ImageFolder layout)")
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="the image folders, as --data reads them")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the shards go: a new or empty folder (later: --data-dir of train and eval; "
                             "copy it to s3://… or gs://… and pass that URL instead)")
    parser.add_argument("--max-side", type=int, default=320, metavar="PX",
                        help="longest side of the stored JPEGs; larger images are shrunk (default 320: "
                             "RandomResizedCrop at 224 rarely needs more)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    parser.add_argument("--on-bad-image", choices=("skip", "stop"), default="skip",
                        help="an image that cannot be decoded: skip it (named on stderr and in the manifest) or "
                             "stop without writing anything (default skip)")
    parser.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default: one per CPU core available)")


def run(args) -> int:
    start = time.perf_counter()
    manifest = prepare_shards(args.data, args.data_dir, args.out, max_side=args.max_side, quality=args.quality,
                              on_bad_image=args.on_bad_image, workers=args.workers)
    total = sum(entry["count"] for entry in manifest["splits"].values())
    skipped = len(manifest["skipped"])
    print(f"wrote {total} images of {args.data} into {args.out} in {time.perf_counter() - start:.1f} s"
          + (f" ({skipped} undecodable images skipped, listed in manifest.json)" if skipped else ""))
    print(f"train from it: resnets train --data {args.data} --data-dir {args.out}")
    return 0
