"""`resnets export`: finished runs (one, or several as a deep ensemble) as one ONNX or TorchScript
graph for serving, with a sidecar JSON (`<file>.json`) of what the graph expects.

The graph takes float32 N×3×S×S RGB images with values in [0, 1] (pixel / 255), already brought
to the run's image size S as the sidecar's `preprocess` says, and normalizes them itself with the
run's training mean/std: a caller only decodes, resizes and divides by 255. It returns the
averaged class probabilities (N×C), or with --members every member's probabilities (M×N×C,
whose mean over the first axis is the averaged output). The batch dimension is dynamic.

How each method becomes one graph (`ExportedModel`): the method's own `predict` is traced, so a
BatchEnsemble tiles its input inside the graph exactly as it does in `resnets eval`; a deep
ensemble is a module holding its M members' models and averaging their softmaxes. SWA exports
its averaged weights (what it predicts with). MC dropout and SWAG predict by sampling, which a
serving graph should not do silently: they export their deterministic mean model (MC dropout:
the network with dropout off, the usual weight-scaling approximation; SWAG: the SWA mean its
samples are drawn around), and the sidecar says so under `exported_as` and `notes`.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import runs as run_files
from .devices import resolve_runtime
from .errors import UserError, writable_path
from .evaluate import EvalRequest, RunData, build_evaluated_model, finalize_for_eval, read_runs
from .methods import DeepEnsemble, Method, method_class
from .predict import expand_ensemble_roots, preprocess_description
from .tta import HELP as TTA_HELP, TTA_MODES, check_mode as check_tta, with_tta

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
ONNX_INSTALL = "pip install 'onnx>=1.15' 'onnxruntime>=1.17'"
INPUT_NAME = "images"


def add_arguments(parser) -> None:
    """The flags of `resnets export` (the caller sets the handler to `run`)."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories written by `resnets train`; several are exported as one deep-ensemble "
                             "graph (the folder of a `--method ensemble` run: its members)")
    parser.add_argument("--format", choices=tuple(FORMATS) + ("timm",), default="onnx",
                        help="onnx (needs the onnx package), torchscript, or timm: a folder --out DIR with "
                             "config.json and model.safetensors in timm's Hugging Face layout, for one ImageNet-style "
                             "ResNet or ResNet-RS run (default: onnx)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="the model file (default: <first RUN_DIR>/model.onnx or model.pt, model-members.* with "
                             "--members); the sidecar JSON is FILE.json")
    parser.add_argument("--members", action="store_true",
                        help="the graph returns every member's probabilities (M×N×C) instead of their mean (N×C)")
    parser.add_argument("--weights", choices=run_files.WEIGHTS, default="best",
                        help="which weights of the runs, as for `resnets eval` (default: best)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP + "; the views are in the graph")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="where the run's dataset lives now; only SWA/SWAG runs exported with --weights last "
                             "read it (to re-estimate BatchNorm for the averaged weights)")


def require_format(fmt: str) -> None:
    """UserError with the install command when the package `fmt` needs is missing."""
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise UserError(f"--format onnx needs the onnx package, which is not installed: run `{ONNX_INSTALL}` "
                            "(or install resnets with its export extra, `pip install 'resnets[export]'`), then "
                            "export again; --format torchscript needs nothing more.") from None


@dataclass
class ExportRequest:
    """What `resnets export` writes; the fields are its flags (see add_arguments)."""
    runs: list
    format: str = "onnx"
    out: Path | None = None
    members: bool = False
    weights: str = "best"
    data_dir: str | None = None
    tta: str = "none"  # test-time augmentation inside the graph (tta.TTA_MODES)

    def __post_init__(self) -> None:
        check_tta(self.tta)
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format!r} is unknown: expected one of {', '.join(FORMATS)}.")
        if self.out is None:
            name = "model-members" if self.members else "model"
            self.out = Path(self.runs[0]) / (name + FORMATS[self.format])
        self.out = writable_path(self.out, "--out", f"a {FORMATS[self.format]} file path")

    @classmethod
    def from_args(cls, args) -> "ExportRequest":
        return cls(runs=list(args.runs), format=args.format, out=args.out, members=args.members,
                   weights=args.weights, data_dir=args.data_dir, tta=args.tta)

    @property
    def sidecar(self) -> Path:
        return self.out.with_name(self.out.name + ".json")


class ExportedModel(nn.Module):
    """float32 N×3×S×S images in [0, 1] → probabilities N×C (or member probabilities M×N×C).

    `models` holds one model (a run; a BatchEnsemble's members live inside it) or a deep
    ensemble's M models; `rule` is the method whose `predict` each one runs.
    """

    def __init__(self, models: list[nn.Module], rule: Method, mean, std, members: bool = False):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.rule = rule
        self.return_members = members
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_members(self) -> int:
        return len(self.models) if len(self.models) > 1 else self.rule.members

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        predictions = [self.rule.predict(model, x) for model in self.models]
        if len(predictions) > 1:  # a deep ensemble: the members are the runs
            member_probs = torch.stack([p.probs for p in predictions])
            return member_probs if self.return_members else member_probs.mean(0)
        prediction = predictions[0]
        if not self.return_members:
            return prediction.probs
        return prediction.member_probs if prediction.member_probs is not None else prediction.probs.unsqueeze(0)


def build_exported_model(request: ExportRequest) -> tuple[ExportedModel, dict[str, Any]]:
    """The graph's module (eval mode, CPU, fp32) and the sidecar's description of it."""
    eval_args = EvalRequest(runs=[str(r) for r in expand_ensemble_roots([Path(r) for r in request.runs])],
                            weights=request.weights, data_dir=request.data_dir, device="cpu", precision="fp32",
                            num_workers=0)
    runs = read_runs(eval_args.runs)
    cfg, resolved = runs[0]
    runtime = resolve_runtime("cpu", "fp32", channels_last=False, num_workers=0)
    data = RunData.of(cfg, resolved)
    mean, std = data.normalization(eval_args)
    model, method, weight_files, info = build_evaluated_model(eval_args, runs, runtime)
    notes = []
    if len(runs) == 1 and method_class(cfg.method).finalizes and request.weights == "last":
        # best/final weights of SWA/SWAG already are the finalized average (training saved them
        # after finalizing); the last checkpoint's are the last iterate, so finalize as eval does.
        data.load_own(eval_args, why=f"finalizing the {cfg.method} run's --weights last")
        finalize_for_eval(eval_args, data, model, method, runtime)

    if isinstance(method, DeepEnsemble):
        models = []
        for index in range(len(method)):
            member = copy.deepcopy(model)
            method.load_member(member, index)
            models.append(member.eval())
        rule = method.base
    else:
        models, rule = [model], method
    rule, exported_as, note = rule.export_rule()  # a method that samples names its deterministic stand-in
    if note:
        notes.append(note)
    if method.finalizes and not method.single_pass:
        notes.append(f"SWAG: the graph is the SWA mean of the collected weights with BatchNorm re-estimated; the "
                     f"{method.samples} weight samples `resnets eval` averages are not in it.")
        exported_as = "swa (SWAG's mean weights)"
    elif isinstance(method, DeepEnsemble):
        exported_as = f"ensemble of {len(models)} {rule.name} models"
        if any(method_class(c.method).finalizes for c, _ in runs):
            notes.append("ensemble members trained with SWA/SWAG contribute their SWA-mean weights (no sampling).")
    rule = with_tta(rule, request.tta)
    wrapper = ExportedModel(models, rule, mean, std, request.members).eval()
    description = dict(
        method=info["method"], **({"base_method": info["base_method"]} if "base_method" in info else {}),
        exported_as=exported_as, members=wrapper.num_members,
        member_kind="runs" if len(models) > 1 else (f"{info['method']} members" if rule.members > 1 else "none"),
        runs=eval_args.runs, weights=request.weights, weight_files=[str(p) for p in weight_files],
        model=cfg.model, width=cfg.width, data=cfg.data, image_size=data.image_size, num_classes=data.num_classes,
        mean=[float(v) for v in mean], std=[float(v) for v in std],
        class_names=_class_names(resolved, data.num_classes),
        preprocess=preprocess_description(cfg.data, data.image_size),
        tta=request.tta, notes=notes,
    )
    return wrapper, description


def _class_names(resolved: dict, num_classes: int) -> list[str] | None:
    names = resolved.get("class_names")
    return [str(n) for n in names] if isinstance(names, list) and len(names) == num_classes else None


@contextlib.contextmanager
def _quiet_tracing():
    """Tracing warns about Python-side checks it records as constants (BatchEnsemble's
    batch-multiple check, always true inside the graph since the graph tiles its own input) and
    about the exporters' deprecation; neither concerns the user of the exported file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def export_runs(request: ExportRequest) -> dict[str, Any]:
    """Write the model file and its sidecar; returns the sidecar's content."""
    require_format(request.format)
    wrapper, description = build_exported_model(request)
    size = description["image_size"]
    output = "member_probs" if request.members else "probs"
    members = wrapper.num_members
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    sidecar: dict[str, Any] = dict(
        format=request.format, file=request.out.name,
        input=dict(name=INPUT_NAME, dtype="float32", shape=["batch", 3, size, size], layout="NCHW",
                   channels="RGB", value_range=[0.0, 1.0], normalized_inside=True,
                   text=f"float32 RGB images, batch x 3 x {size} x {size}, pixel values / 255 (0..1), brought to "
                        f"{size} px as `preprocess` says; the graph subtracts `mean` and divides by `std` itself"),
        output=dict(name=output, dtype="float32",
                    shape=[members, "batch", description["num_classes"]] if request.members
                    else ["batch", description["num_classes"]],
                    text=(f"each of the {members} members' class probabilities; their mean over the first axis is "
                          "the predictive distribution") if request.members
                    else "class probabilities (the members' average for methods with members)"),
        dynamic_batch=True, **description, torch=torch.__version__,
    )
    path = request.out
    with _quiet_tracing(), torch.no_grad():
        if request.format == "onnx":
            _export_onnx(wrapper, example, path, output, sidecar)
        else:
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            try:
                torch.jit.save(traced, str(path), _extra_files={"resnets.json": json.dumps(sidecar)})
            except (OSError, RuntimeError) as error:
                raise UserError(f"--out {str(path)!r} cannot be written: {error}.") from None
        sidecar["check"] = _check(request.format, path, wrapper, size, output)
    run_files.write_json(request.sidecar, sidecar, flag="--out")
    return sidecar


def _export_onnx(wrapper: ExportedModel, example: torch.Tensor, path: Path, output: str, sidecar: dict) -> None:
    import onnx

    options = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript-based exporter: it needs only the onnx package (the dynamo one also
        # needs onnxscript) and gives a plain graph with a symbolic batch dimension.
        options["dynamo"] = False
    batch_axis = 1 if output == "member_probs" else 0
    try:
        torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[output],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, output: {batch_axis: "batch"}},
                          opset_version=ONNX_OPSET, do_constant_folding=True, **options)
    except OSError as error:
        raise UserError(f"--out {str(path)!r} cannot be written: {error.strerror or error}.") from None
    sidecar["opset"] = ONNX_OPSET
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = "resnets", json.dumps(sidecar)  # the sidecar travels inside the file too
    onnx.save(model, str(path))


@torch.no_grad()
def _check(fmt: str, path: Path, wrapper: ExportedModel, size: int, output: str) -> dict[str, Any]:
    """Run the written file on random images at two batch sizes and compare with PyTorch."""
    generator = torch.Generator().manual_seed(1)
    batches = [torch.rand(n, 3, size, size, generator=generator) for n in (1, 3)]
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return dict(skipped=f"onnxruntime is not installed (`{ONNX_INSTALL}`)")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda x: torch.from_numpy(session.run([output], {INPUT_NAME: x.numpy()})[0])  # noqa: E731
        runtime = f"onnxruntime {onnxruntime.__version__}"
    else:
        loaded = torch.jit.load(str(path))
        run, runtime = loaded, f"torch.jit {torch.__version__}"
    diff = max(float((run(x) - wrapper(x)).abs().max()) for x in batches)
    if not diff < 1e-3:
        print(f"resnets export: warning: {path} differs from the PyTorch model by up to {diff:.2e} on random "
              "images; check the exported file before serving it.", file=sys.stderr)
    return dict(runtime=runtime, batch_sizes=[len(x) for x in batches], max_abs_diff=diff)


def run(args) -> int:
    """`resnets export`: write the model file and its sidecar (see add_arguments)."""
    if args.format == "timm":
        return _run_timm(args)
    request = ExportRequest.from_args(args)
    sidecar = export_runs(request)
    size_mb = request.out.stat().st_size / 2**20
    members = f", {sidecar['members']} members" if sidecar["members"] > 1 else ""
    print(f"exported {sidecar['exported_as']}{members} as {request.format}: {request.out} ({size_mb:.1f} MiB)")
    print(f"input: {sidecar['input']['text']}")
    print(f"output {sidecar['output']['name']} {sidecar['output']['shape']}: {sidecar['output']['text']}")
    for note in sidecar["notes"]:
        print(f"note: {note}")
    check = sidecar["check"]
    if "max_abs_diff" in check:
        print(f"check: {check['runtime']} vs PyTorch on batches of {check['batch_sizes']}: max |diff| "
              f"{check['max_abs_diff']:.2e}")
    else:
        print(f"check skipped: {check['skipped']}")
    print(f"sidecar: {request.sidecar}")
    return 0


def _run_timm(args) -> int:
    """`resnets export RUN --format timm --out DIR` (timm_format.py)."""
    from .timm_format import export_timm

    if len(args.runs) != 1 or args.members or args.tta != "none":
        raise UserError("--format timm exports one run's network as timm builds it: give exactly one RUN_DIR, "
                        "without --members or --tta.")
    if args.out is None:
        raise UserError("--format timm needs --out DIR, the folder to write config.json and model.safetensors to.")
    config = export_timm(args.runs[0], args.out, args.weights)
    print(f"exported {config['architecture']} ({config['num_classes']} classes) for timm: {args.out}/model.safetensors "
          f"and {args.out}/config.json")
    print(f"load it with: timm.create_model({config['architecture']!r}, pretrained=True, "
          f"num_classes={config['num_classes']}, pretrained_cfg_overlay=dict(file='{args.out}/model.safetensors', "
          f"num_classes={config['num_classes']})) "
          f"or timm.create_model('local-dir:{args.out}', pretrained=True)")
    return 0
