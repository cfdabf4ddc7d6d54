"""`resnets bench` on tiny inputs: the protocol (warm-up, rounds, medians, interleaving with a
peer, batch-size probing) rather than the speed itself, which no unit test should judge."""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import pytest
import torch

from resnets import bench, create_model
from resnets.errors import UserError
from resnets.models.stats import count_flops, count_parameters

TINY = dict(image_size=8, batch_size=2, iters=1, rounds=2, warmup=1, device="cpu")


def test_benchmark_reports_medians_of_rounds():
    result = bench.benchmark("resnet20", mode="both", **TINY)
    model = create_model("resnet20", num_classes=1000, image_size=8)
    assert result["params"] == count_parameters(model)
    assert result["gflops"] == pytest.approx(count_flops(model, 8) / 1e9)
    assert result["batch_size"] == 2 and result["batch_size_auto"] is False
    assert result["device"] == "cpu" and "cores" in result["device_name"]
    assert result["torch"] == torch.__version__
    for mode in ("train", "infer"):
        s = result[mode]
        assert len(s["round_ms"]) == 2
        assert s["ms_per_step"] == pytest.approx(statistics.median(s["round_ms"]))
        assert s["img_per_sec"] == pytest.approx(2 * 1000 / s["ms_per_step"])
        assert s["iter_per_min"] == pytest.approx(60_000 / s["ms_per_step"])
        assert s["peak_memory_mb"] > 0 and s["memory_kind"] == "process peak RSS"
    assert "compare" not in result and "ratio" not in result
    json.dumps(result)  # what --json writes


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_steps(precision):
    result = bench.benchmark("resnet20", mode="train", precision=precision, channels_last=True, **TINY)
    assert result["precision"] == precision and result["train"]["img_per_sec"] > 0


def test_compare_interleaves_rounds_with_the_peer(monkeypatch):
    pytest.importorskip("timm")
    order = []
    original = bench._Timed.time_round

    def recording(self, mode, iters):
        order.append(self.label)
        return original(self, mode, iters)

    monkeypatch.setattr(bench._Timed, "time_round", recording)
    result = bench.benchmark("resnet18", image_size=16, batch_size=1, iters=1, rounds=2, warmup=0,
                             device="cpu", mode="infer", compare="timm", num_classes=10)
    assert order == ["resnets/resnet18", "timm/resnet18"] * 2
    peer = result["compare"]
    assert peer["library"] == "timm" and len(peer["infer"]["round_ms"]) == 2
    paired = [p / o for o, p in zip(result["infer"]["round_ms"], peer["infer"]["round_ms"])]
    assert result["ratio"]["infer"] == pytest.approx(statistics.median(paired))
    # At 16 px our resnet18 has the 3x3 stem and timm's does not: the table says so.
    assert peer["gflops"] != pytest.approx(result["gflops"], rel=0.01)
    assert "differs from ours" in bench.format_result(result)


def test_compare_same_architecture_has_same_size():
    pytest.importorskip("torchvision")
    result = bench.benchmark("resnet18", image_size=72, batch_size=1, iters=1, rounds=1, warmup=0,
                             device="cpu", mode="infer", compare="torchvision", num_classes=10)
    assert result["compare"]["params"] == result["params"]
    assert result["compare"]["gflops"] == pytest.approx(result["gflops"])
    assert "differs" not in bench.format_result(result)


def test_compare_errors_name_the_flag(monkeypatch):
    with pytest.raises(UserError, match="--compare torchvision: torchvision has no model named 'resnet20'"):
        bench.benchmark("resnet20", compare="torchvision", **TINY)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(UserError, match="--compare timm needs the timm package"):
        bench.benchmark("resnet50", compare="timm", **TINY)


def test_probe_halves_until_a_step_fits():
    tried, cleaned = [], []

    def step(batch):
        tried.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert bench.probe_batch_size(step, lambda: cleaned.append(1)) == 16
    assert tried == [128, 64, 32, 16] and len(cleaned) == 3

    def cpu_oom(batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    with pytest.raises(UserError, match="--batch-size auto"):
        bench.probe_batch_size(cpu_oom, lambda: None, start=4)

    def bug(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.probe_batch_size(bug, lambda: None)


def test_auto_batch_size_end_to_end(monkeypatch):
    monkeypatch.setattr(bench, "AUTO_START_BATCH", 8)
    original = bench._Timed.train_step

    def small_memory(self):
        if self.inputs.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        original(self)

    monkeypatch.setattr(bench._Timed, "train_step", small_memory)
    result = bench.benchmark("resnet20", image_size=8, batch_size="auto", iters=1, rounds=1, warmup=0,
                             device="cpu", mode="train")
    assert result["batch_size"] == 2 and result["batch_size_auto"] is True


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    args = parse("--model", "resnet20", "--image-size", "8", "--batch-size", "2", "--iters", "1", "--rounds", "1",
                 "--warmup", "0", "--device", "cpu", "--mode", "infer", "--json", str(out), "--quiet")
    assert bench.run(args) == 0
    printed = capsys.readouterr().out
    assert "resnets/resnet20" in printed and "img/s" in printed and "infer" in printed
    saved = json.loads(out.read_text())
    assert saved["model"] == "resnet20" and saved["infer"]["img_per_sec"] > 0 and "train" not in saved


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet9"], "--model 'resnet9' is not in the zoo"),
    (["--model", "resnet20", "--batch-size", "many"], "--batch-size 'many'"),
    (["--model", "resnet20", "--batch-size", "0"], "--batch-size '0'"),
    (["--model", "resnet20", "--iters", "0"], "--iters must be"),
    (["--model", "resnet20", "--warmup", "-1"], "--warmup must be"),
])
def test_cli_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        bench.run(parse(*argv, "--device", "cpu", "--quiet"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_user_error():
    with pytest.raises(UserError, match="--device cuda"):
        bench.run(parse("--model", "resnet20", "--device", "cuda"))


@pytest.mark.slow
def test_compiled_model():
    result = bench.benchmark("resnet20", compile=True, mode="both", **TINY)
    assert result["compile"] and result["train"]["img_per_sec"] > 0
