"""`resnets export RUN --format timm --out DIR`: the run's weights in the layout timm reads from
the Hugging Face Hub (or a local folder): DIR/model.safetensors and DIR/config.json.

timm then builds its own model of the same name with them:

    timm.create_model("resnet50", pretrained=True, num_classes=C,
                      pretrained_cfg_overlay=dict(file="DIR/model.safetensors", num_classes=C))
    timm.create_model("local-dir:DIR", pretrained=True)  # reads config.json (architecture, classes, preprocessing)

The overlay must name the classes too: timm drops a checkpoint's classifier when the model's
num_classes differs from its pretrained_cfg's (1000 by default; timm/models/_builder.py,
load_pretrained), so the overlay with `file` alone gives the run's backbone with a fresh head.

config.json follows what timm's `push_to_hf_hub` writes (timm/models/_hub.py, save_for_hf):
architecture, num_classes, num_features, global_pool, label_names and pretrained_cfg. Only
models that are exactly timm's architecture are exported: resnet18..152 with the 7x7 stem and
ResNet-RS, at width 1, as `create_model(name)` builds them (the key mapping is
models/weights.py's, checked against timm's logits in tests/test_models.py). Pushing DIR to the
Hub is `huggingface_hub.upload_folder(repo_id=..., folder_path=DIR)` where the network reaches it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import runs as run_files
from .errors import UserError
from .evaluate import EvalRequest, RunData
from .methods import method_class
from .models import MODELS, create_model
from .models.weights import export_weights_to_timm
from .predict import EVAL_CROP_FRACTION, decoded_per_sample

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def check_timm_architecture(model, name: str, num_classes: int) -> None:
    """UserError unless `model` has exactly the tensors of the timm architecture `name`."""
    spec = MODELS.get(name)
    if spec is None or spec.family not in ("imagenet", "resnetrs"):
        timm_models = [n for n, s in MODELS.items() if s.family in ("imagenet", "resnetrs")]
        raise UserError(f"--format timm: the run's model {name!r} has no timm counterpart; expected one of "
                        f"{', '.join(timm_models)} (CIFAR-style ResNets are not in timm).")
    reference = create_model(name, num_classes=num_classes, image_size=224).state_dict()
    ours = model.state_dict()
    differing = [k for k in set(reference) | set(ours)
                 if k not in ours or k not in reference or ours[k].shape != reference[k].shape]
    if differing:
        key = sorted(differing)[0]
        raise UserError(f"--format timm: the run's {name} is not timm's {name} (tensor {key!r} differs: a width, "
                        "stem, shortcut, SE or head override, or the 3x3 stem of images of 64 px or less); timm "
                        "could not load its weights. Export it with --format onnx or torchscript instead.")


def export_timm(run_dir, out_dir, weights: str = "best") -> dict[str, Any]:
    """Write DIR/model.safetensors and DIR/config.json for one run; returns config.json's content."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file: --format timm writes a folder (config.json and "
                        f"{WEIGHTS_FILE}); give a folder path.")
    if not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it first.")
    cfg, resolved = run_files.read_run(run_dir)
    method = method_class(cfg.method)
    if method.separate_runs:
        raise UserError(f"--format timm exports one network, but {str(run_dir)!r} is a {cfg.method} run (several "
                        "members); export one member run, or use --format onnx for the whole ensemble.")
    loaded = run_files.load_run(run_dir, "cpu", weights)
    num_classes = int(resolved["num_classes"])
    check_timm_architecture(loaded.model, cfg.model, num_classes)
    state = export_weights_to_timm(loaded.model)
    size = int(resolved["image_size"])
    mean, std = RunData.of(cfg, resolved).normalization(EvalRequest(runs=[str(run_dir)]))
    deep = loaded.model.stem.kind == "deep"
    names = resolved.get("class_names")
    crop_pct = EVAL_CROP_FRACTION if decoded_per_sample(cfg.data) else 1.0
    config: dict[str, Any] = dict(
        architecture=cfg.model, num_classes=num_classes, num_features=int(loaded.model.fc.in_features),
        global_pool="avg",
        **({"label_names": [str(n) for n in names]} if isinstance(names, list) and len(names) == num_classes else {}),
        pretrained_cfg=dict(
            tag="resnets", custom_load=False, input_size=[3, size, size], fixed_input_size=False,
            interpolation="bilinear", crop_pct=crop_pct, crop_mode="center",
            mean=[float(v) for v in mean], std=[float(v) for v in std],
            num_classes=num_classes, pool_size=[max(1, size // 32)] * 2,
            first_conv="conv1.0" if deep else "conv1", classifier="fc"),
    )
    out.mkdir(exist_ok=True)
    try:
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "source": "resnets"})
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"--out {str(out)!r} cannot be written: {error.strerror or error}.") from None
    return config
