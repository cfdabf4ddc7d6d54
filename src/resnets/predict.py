"""`resnets predict`: image files through finished runs, one row of top-k classes and uncertainty
per image.

Reading order: `PredictRequest` (the flags, checked before any work), `collect_images` (files and
folders to a list of images), `predict_images` (the model, method, finalization and temperature of
`resnets eval`, applied to the images), then the rows and their outputs (terminal table, CSV,
JSONL) and `run`, the command.

Every image goes through the run's own evaluation input: decoded to RGB, brought to the run's
image size as its dataset brings images there (`model_input_transform`), then batched and
normalized by the very pipeline `resnets eval` uses (`Predictor.batches`, as uint8 tensors), so
an image of the evaluation set gets the probabilities `resnets eval --save-predictions` writes.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import runs as run_files
from .data import dataset_spec
from .data.pipelines import EVAL_CROP_FRACTION, eval_image_transform
from .data.sources import IMAGE_EXTENSIONS, TensorSplit, decode_rgb, resize_images
from .devices import resolve_runtime
from .errors import UserError, writable_path
from .tta import HELP as TTA_HELP, TTA_MODES, with_tta
from .evaluate import (EvalRequest, RunData, add_device_arguments, build_evaluated_model, finalize_for_eval,
                       fit_run_temperature, read_runs, temperature_split)
from .methods import METHODS, apply_temperature, method_class
from .prediction import Predictor, predict_dataset

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# Methods with several passes over the images (SWAG samples, deep-ensemble members) get the
# images in chunks of at most this many bytes of uint8 pixels, each chunk predicted by all
# passes: large enough that a typical folder is one chunk (SWAG re-estimates BatchNorm once per
# sample and chunk), small enough to bound memory (about 1,800 images at 224 px).
_MULTI_PASS_CHUNK_BYTES = 256 * 2**20


def add_arguments(parser) -> None:
    """The flags of `resnets predict` (the caller sets the handler to `run`)."""
    parser.usage = "%(prog)s [options] RUN_DIR [RUN_DIR ...] IMAGE|FOLDER [IMAGE|FOLDER ...]"
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR... IMAGE|FOLDER...",
                        help="one or more run directories written by `resnets train` (several: a deep ensemble; the "
                             "folder of a `--method ensemble` run: its members), then JPEG/PNG files and folders "
                             "of them (searched recursively)")
    parser.add_argument("--weights", choices=run_files.WEIGHTS, default="best",
                        help="which weights of the runs, as for `resnets eval` (default: best)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K",
                        help="classes reported per image, most probable first (default: 5)")
    parser.add_argument("--abstain-below", type=float, default=None, metavar="P",
                        help="mark images whose top probability is below P (0 < P <= 1) as abstained")
    parser.add_argument("--temperature-scale", action="store_true",
                        help="fit a temperature on the run's own val split (as `resnets eval --temperature-scale`) "
                             "and report the scaled probabilities")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="where the run's own dataset lives now, for --temperature-scale and SWA/SWAG runs "
                             "(which re-estimate BatchNorm on it); default: the run's config")
    parser.add_argument("--out", metavar="FILE.csv|FILE.jsonl", default=None,
                        help="write the predictions to this file (format from the extension) instead of printing "
                             "a table")
    execution = parser.add_argument_group("execution")
    add_device_arguments(execution)
    execution.add_argument("--batch-size", type=int, default=None, metavar="N",
                           help="images per forward pass (default: the run's eval_batch_size)")
    execution.add_argument("--num-workers", type=int, default=None, metavar="N",
                           help="threads decoding images (default: the run's num_workers, else the cores divided among LOCAL_WORLD_SIZE processes; "
                                "0 decodes in the main thread)")
    execution.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    execution.add_argument("--seed", type=int, default=0, help="seed of MC-dropout draws (default: 0)")
    execution.add_argument("--no-progress", dest="progress", action="store_false",
                           help="no progress bar (shown on stderr when a folder is given)")


# --- the request, checked before any work --------------------------------------------------


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / run_files.CONFIG_FILE).is_file()


def split_paths(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(run directories, images and folders): the leading paths that are run directories are the runs."""
    runs = []
    for path in paths:
        if not is_run_dir(path):
            break
        runs.append(Path(path))
    if not runs:
        first = Path(paths[0])
        if first.is_dir() or not first.exists():
            run_files.read_run(first)  # raises the run-directory error that names what is missing
        raise UserError(f"{first} is not a run directory: give the run directories first, then the images "
                        "(`resnets predict RUN_DIR [RUN_DIR ...] IMAGE|FOLDER [...]`).")
    inputs = [Path(p) for p in paths[len(runs):]]
    if not inputs:
        raise UserError(f"no images given after the run director{'y' if len(runs) == 1 else 'ies'} "
                        f"{', '.join(map(str, runs))}: expected JPEG/PNG files or folders of them, e.g. "
                        f"`resnets predict {runs[0]} photos/`.")
    return runs, inputs


def expand_ensemble_roots(run_dirs: list[Path]) -> list[Path]:
    """The run directories with the folder of a `--method ensemble` run replaced by its members."""
    expanded = []
    for run_dir in run_dirs:
        saved = run_files.read_config(run_dir)
        members = saved.resolved.get("members")
        method = METHODS.get(saved.config.get("method"))
        if method is not None and method.separate_runs and isinstance(members, list) and members:
            expanded.extend(Path(run_dir) / str(m) for m in members)
        else:
            expanded.append(Path(run_dir))
    return expanded


@dataclass
class PredictRequest:
    """What `resnets predict` does; the fields are its flags (see add_arguments)."""
    runs: list[Path]
    inputs: list[Path]
    weights: str = "best"
    top_k: int = 5
    abstain_below: float | None = None
    temperature_scale: bool = False
    data_dir: str | None = None
    out: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    seed: int = 0
    tta: str = "none"  # test-time augmentation (tta.TTA_MODES)
    progress: bool = True
    out_format: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise UserError(f"--top-k must be 1 or more classes, got {self.top_k}.")
        if self.abstain_below is not None and not 0 < self.abstain_below <= 1:
            raise UserError(f"--abstain-below must be a probability in (0, 1], got {self.abstain_below}.")
        if self.out is not None:
            out = Path(self.out)
            self.out_format = OUTPUT_FORMATS.get(out.suffix.lower())
            if self.out_format is None:
                raise UserError(f"--out {str(out)!r}: the format follows the extension, expected a file name ending "
                                f"in {' or '.join(OUTPUT_FORMATS)} (e.g. preds.csv or preds.jsonl).")
            self.out = writable_path(out, "--out", "a .csv or .jsonl file path")

    @classmethod
    def from_args(cls, args) -> "PredictRequest":
        runs, inputs = split_paths(list(args.paths))
        return cls(runs=runs, inputs=inputs, weights=args.weights, top_k=args.top_k,
                   abstain_below=args.abstain_below, temperature_scale=args.temperature_scale,
                   data_dir=args.data_dir, out=args.out, device=args.device, precision=args.precision,
                   batch_size=args.batch_size, num_workers=args.num_workers, seed=args.seed, progress=args.progress,
                   tta=args.tta)

    def eval_request(self, run_dirs: list[Path]) -> EvalRequest:
        """The `resnets eval` request whose model, method, normalization and temperature these are."""
        return EvalRequest(runs=[str(r) for r in run_dirs], weights=self.weights, data_dir=self.data_dir,
                           device=self.device, precision=self.precision, batch_size=self.batch_size,
                           num_workers=self.num_workers, seed=self.seed, temperature_scale=self.temperature_scale,
                           tta=self.tta)


# --- images ----------------------------------------------------------------------------------


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def collect_images(inputs: list[Path], warn: Callable[[str], None] | None = None) -> list[Path]:
    """The image files of `inputs` in order: files as given, folders' JPEG/PNG files recursively
    (sorted, hidden files and folders left out); each file once."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    images: list[Path] = []
    seen: set[Path] = set()
    empty: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if _is_image_name(p) and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                           key=lambda p: p.relative_to(path).parts)
            if not found:
                empty.append(path)
        elif path.is_file():
            if not _is_image_name(path):
                warn(f"resnets predict: warning: skipped {path}: not a JPEG or PNG file (expected "
                     f"{', '.join(IMAGE_EXTENSIONS)})")
                continue
            found = [path]
        else:
            raise UserError(f"{path} does not exist: expected a JPEG or PNG image file or a folder of them.")
        for image in found:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                images.append(image)
    if not images:
        if len(inputs) == 1 and empty:
            raise UserError(f"folder {inputs[0]} holds no images: expected JPEG or PNG files "
                            f"({', '.join(IMAGE_EXTENSIONS)}) in it or its subfolders.")
        raise UserError(f"no images found in {', '.join(map(str, inputs))}: expected JPEG or PNG files "
                        f"({', '.join(IMAGE_EXTENSIONS)}) or folders holding them.")
    for folder in empty:
        warn(f"resnets predict: warning: folder {folder} holds no JPEG or PNG images")
    return images


def decoded_per_sample(data: str) -> bool:
    """Whether the run's dataset is decoded image by image through the evaluation resize and
    center crop (ImageNet-size photo folders) rather than held as ≤ 64 px tensors."""
    spec = dataset_spec(data)
    return spec.image_size is not None and spec.image_size > 64


def model_input_transform(data: str, image_size: int) -> Callable[[Path], torch.Tensor]:
    """An image file → uint8 3×S×S RGB as the run's dataset brings images to its image size S.

    Photo-folder datasets (ImageNet): `resnets eval`'s own decode and crop
    (`data.pipelines.eval_image_transform`), the shorter side resized to round(S / 0.875) then
    the center S×S crop.

    Datasets held as tensors (CIFAR, digits, TinyImageNet, downsampled ImageNet, npy, synthetic):
    their loaders resize every square image to S×S with `resize_images` (bilinear, antialiased;
    TinyImageNet's JPEGs the same way), and the evaluation pipeline then only normalizes. An image
    is therefore resized with that same function. A non-square image is first cropped to its
    central square: the training images are all square, so this matches them exactly when the
    image is square and, when it is not, keeps the proportions the model saw instead of
    squashing the picture (the crop keeps the middle, as the photo datasets' center crop does).
    """
    if decoded_per_sample(data):
        return eval_image_transform(image_size)

    def to_size(path: Path) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        image = decode_rgb(path)
        height, width = image.shape[-2:]
        if height != width:
            side = min(height, width)
            image = TF.center_crop(image, [side, side])
        return resize_images(image[None], image_size)[0]

    return to_size


def preprocess_description(data: str, image_size: int) -> dict[str, Any]:
    """What `model_input_transform` does, in words and numbers (for export sidecars)."""
    if decoded_per_sample(data):
        return dict(steps=["resize", "center_crop"], resize_shorter_side=round(image_size / EVAL_CROP_FRACTION),
                    center_crop=image_size, interpolation="bilinear", antialias=True,
                    text=f"resize the shorter side to {round(image_size / EVAL_CROP_FRACTION)} px (bilinear, "
                         f"antialiased), then crop the central {image_size}x{image_size} pixels")
    return dict(steps=["center_square_crop", "resize"], resize=[image_size, image_size], interpolation="bilinear",
                antialias=True,
                text=f"crop a non-square image to its central square, then resize to {image_size}x{image_size} "
                     "(bilinear, antialiased)")


@dataclass
class _Decoded:
    path: Path
    image: torch.Tensor | None  # uint8 3×S×S, or None when unreadable
    error: str | None = None


def _load(path: Path, transform) -> _Decoded:
    try:
        image = transform(path)
    except UserError as error:
        # The decoder's message is written for dataset files; the decoder's own reason is its context.
        cause = error.__context__
        return _Decoded(path, None, f"{type(cause).__name__}: {cause}" if cause is not None else str(error))
    return _Decoded(path, image)


def _decoded_windows(paths: list[Path], load: Callable[[Path], _Decoded], window: int,
                     workers: int) -> Iterator[list[_Decoded]]:
    """The decoded images in order, `window` at a time; with workers, the next window is decoded
    by threads while the current one is predicted (PIL and resizing release the GIL)."""
    if workers <= 0:
        for start in range(0, len(paths), window):
            yield [load(p) for p in paths[start:start + window]]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = None
        for start in range(0, len(paths), window):
            submitted = [pool.submit(load, p) for p in paths[start:start + window]]
            if ahead is not None:
                yield [f.result() for f in ahead]
            ahead = submitted
        if ahead is not None:
            yield [f.result() for f in ahead]


# --- prediction ------------------------------------------------------------------------------


@dataclass
class ImagePredictions:
    paths: list[Path]  # the predicted images, in input order (skipped ones left out)
    probs: torch.Tensor  # N×C final predictive distribution (temperature-scaled when fitted)
    member_probs: torch.Tensor | None  # M×N×C (BatchEnsemble, deep ensemble, MC dropout, SWAG), else None
    skipped: list[tuple[Path, str]]  # unreadable images and why
    class_names: list[str] | None
    runs: list[Path]
    method: str
    weights: str
    image_size: int
    temperature: float | None = None
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)


def predict_images(request: PredictRequest, warn: Callable[[str], None] | None = None) -> ImagePredictions:
    """Predict the request's images with its runs (several: a deep ensemble) as `resnets eval` would."""
    say = warn or (lambda message: print(message, file=sys.stderr))
    paths = collect_images(request.inputs, say)  # cheap, and fails before the model is built
    eval_args = request.eval_request(expand_ensemble_roots(request.runs))
    runs = read_runs(eval_args.runs)
    cfg, resolved = runs[0]
    runtime = resolve_runtime(eval_args.device, eval_args.precision, cfg.channels_last,
                              cfg.num_workers if eval_args.num_workers is None else eval_args.num_workers)
    data = RunData.of(cfg, resolved)
    # Data the model needs is read before it is built, as `resnets eval` does.
    val_split = temperature_split(eval_args, data) if request.temperature_scale else None
    finalizes = len(runs) == 1 and method_class(cfg.method).finalizes
    if finalizes:
        data.load_own(eval_args, why=f"re-estimating BatchNorm for the {cfg.method} run")
    mean, std = data.normalization(eval_args)

    model, method, weight_files, info = build_evaluated_model(eval_args, runs, runtime)
    if finalizes:
        finalize_for_eval(eval_args, data, model, method, runtime)
    method = with_tta(method, request.tta)
    ev = Predictor(model, method, data.num_classes, data.image_size, mean, std, runtime,
                   request.batch_size or cfg.eval_batch_size, request.seed)
    temperature = fit_run_temperature(ev, val_split)[0] if val_split is not None else None

    transform = model_input_transform(cfg.data, data.image_size)
    progress = request.progress and any(p.is_dir() for p in request.inputs)
    probs, member_probs, kept, skipped = _predict_files(ev, paths, transform, runtime.num_workers, progress, say)
    if temperature is not None:
        probs = apply_temperature(probs, temperature)  # members stay unscaled, as eval saves them
    names = resolved.get("class_names")
    class_names = [str(n) for n in names] if isinstance(names, list) and len(names) == data.num_classes else None
    return ImagePredictions(kept, probs, member_probs, skipped, class_names, [Path(r) for r in eval_args.runs],
                            info["method"], request.weights, data.image_size, temperature, str(runtime.device),
                            dict(info, weight_files=[str(p) for p in weight_files]))


def _predict_files(ev: Predictor, paths: list[Path], transform, workers: int, progress: bool, say):
    """(probs N×C, member probs M×N×C or None, predicted paths, skipped (path, why))."""
    from tqdm import tqdm

    # MC-dropout draws are seeded once for the whole run of images, as one `resnets eval` pass.
    torch.manual_seed(ev.seed)
    pixels = 3 * ev.image_size * ev.image_size
    chunk = ev.batch_size if ev.method.single_pass else max(ev.batch_size, _MULTI_PASS_CHUNK_BYTES // pixels)
    probs, members, kept, skipped = [], [], [], []
    pending: list[_Decoded] = []
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def flush(items: list[_Decoded]) -> None:
        split = TensorSplit(torch.stack([item.image for item in items]), torch.zeros(len(items), dtype=torch.int64))
        # The evaluation pipeline of `resnets eval` for in-memory images: batching, device, normalization.
        out = predict_dataset(ev.model, ev.method, ev.batches(split), ev.num_classes, ev.runtime.precision,
                              keep_predictions=True)
        probs.append(out.probs)
        if out.member_probs is not None:
            members.append(out.member_probs)
        kept.extend(item.path for item in items)
        bar.update(len(items))

    try:
        load = lambda path: _load(path, transform)  # noqa: E731
        for window in _decoded_windows(paths, load, ev.batch_size, workers):
            for item in window:
                if item.image is None:
                    skipped.append((item.path, item.error))
                    message = (f"resnets predict: warning: skipped {item.path}: cannot be read as an image "
                               f"({item.error})")
                    if progress:
                        tqdm.write(message, file=sys.stderr)  # above the bar, not through it
                    else:
                        say(message)
                    bar.update(1)
                else:
                    pending.append(item)
            while len(pending) >= chunk:
                flush(pending[:chunk])
                pending = pending[chunk:]
        if pending:
            flush(pending)
    finally:
        bar.close()
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read ({skipped[0][0]}: {skipped[0][1]}"
                        f"{' and the others' if len(skipped) > 1 else ''}): expected JPEG or PNG image files.")
    if skipped:
        say(f"resnets predict: {len(kept)} images predicted, {len(skipped)} skipped (unreadable, named above)")
    return (torch.cat(probs), torch.cat(members, dim=1) if members else None, kept, skipped)


# --- rows and outputs ------------------------------------------------------------------------


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy in nats per row (0 log 0 = 0)."""
    p = probs.double()
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)


def disagreement(probs: torch.Tensor, member_probs: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of members whose top class differs from the ensemble's."""
    return (member_probs.argmax(-1) != probs.argmax(-1)).double().mean(0)


def prediction_rows(pred: ImagePredictions, top_k: int = 5, abstain_below: float | None = None) -> list[dict]:
    """One dict per image: path, top_k [{class, name, prob}], entropy, disagreement (None
    without members), abstain (None without a threshold)."""
    k = min(top_k, pred.probs.shape[1])
    top_p, top_i = pred.probs.float().topk(k, dim=1)
    ent = entropy(pred.probs)
    dis = None
    if pred.member_probs is not None and pred.member_probs.shape[0] > 1:
        dis = disagreement(pred.probs, pred.member_probs)
    rows = []
    for n, path in enumerate(pred.paths):
        top = [{"class": int(i), "name": pred.class_names[int(i)] if pred.class_names else None, "prob": float(p)}
               for p, i in zip(top_p[n], top_i[n])]
        rows.append(dict(path=str(path), top_k=top, entropy=float(ent[n]),
                         disagreement=None if dis is None else float(dis[n]),
                         abstain=None if abstain_below is None else bool(top[0]["prob"] < abstain_below)))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    _write(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_csv(path: Path, rows: list[dict], top_k: int) -> None:
    """One line per image: path, top{r}_class, top{r}_name, top{r}_prob for r = 1..k, entropy,
    disagreement and abstain (empty where they do not apply)."""
    import io

    columns = ["path"] + [f"top{r}_{what}" for r in range(1, top_k + 1) for what in ("class", "name", "prob")]
    columns += ["entropy", "disagreement", "abstain"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {"path": row["path"], "entropy": repr(row["entropy"])}
        for r, top in enumerate(row["top_k"], 1):
            line[f"top{r}_class"] = top["class"]
            line[f"top{r}_name"] = "" if top["name"] is None else top["name"]
            line[f"top{r}_prob"] = repr(top["prob"])
        line["disagreement"] = "" if row["disagreement"] is None else repr(row["disagreement"])
        line["abstain"] = "" if row["abstain"] is None else str(row["abstain"]).lower()
        writer.writerow(line)
    _write(path, buffer.getvalue())


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise UserError(f"--out {str(path)!r} cannot be written: {error.strerror or error}; expected a writable "
                        "file path.") from None


def _label(top: dict, width: int = 24) -> str:
    text = str(top["class"]) if top["name"] is None or top["name"] == str(top["class"]) else top["name"]
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(pred: ImagePredictions, rows: list[dict]) -> str:
    """The predictions as a plain-text table, one line per image."""
    what = str(pred.runs[0]) if len(pred.runs) == 1 else f"ensemble of {len(pred.runs)} runs"
    header = f"{what} ({pred.method}, {pred.weights} weights, {pred.image_size} px"
    if pred.temperature is not None:
        header += f", T = {pred.temperature:.3f}"
    header += f"): {len(rows)} images" + (f", {len(pred.skipped)} skipped" if pred.skipped else "")
    width = min(max(len(row["path"]) for row in rows), 48)
    labels = [_label(row["top_k"][0]) for row in rows]
    label_width = max(5, max(len(label) for label in labels))
    members = rows[0]["disagreement"] is not None
    abstain = rows[0]["abstain"] is not None
    k = len(rows[0]["top_k"])
    title = f"{'image':<{width}}  {'top-1':<{label_width}}  {'prob':>6}  {'entropy':>7}"
    title += f"  {'disagree':>8}" if members else ""
    title += "  abstain" if abstain else ""
    title += f"  top-2..{k}" if k > 2 else ("  top-2" if k == 2 else "")
    lines = [header, title]
    for row, label in zip(rows, labels):
        top = row["top_k"]
        line = f"{row['path']:<{width}}  {label:<{label_width}}  {top[0]['prob']:>6.4f}  {row['entropy']:>7.4f}"
        if members:
            line += f"  {row['disagreement']:>8.3f}"
        if abstain:
            line += f"  {'yes' if row['abstain'] else 'no':<7}"
        if k > 1:
            line += "  " + ", ".join(f"{_label(t, 16)} {t['prob']:.3f}" for t in top[1:])
        lines.append(line.rstrip())
    return "\n".join(lines)


def run(args) -> int:
    """`resnets predict`: predict the images, print a table or write --out (see add_arguments)."""
    request = PredictRequest.from_args(args)
    pred = predict_images(request)
    rows = prediction_rows(pred, request.top_k, request.abstain_below)
    if request.out is None:
        print(format_table(pred, rows))
    else:
        if request.out_format == "csv":
            write_csv(request.out, rows, min(request.top_k, pred.probs.shape[1]))
        else:
            write_jsonl(request.out, rows)
        abstained = sum(bool(row["abstain"]) for row in rows)
        extra = f", {abstained} abstained" if request.abstain_below is not None else ""
        print(f"predictions: {len(rows)} images{extra} -> {request.out}")
    return 0
