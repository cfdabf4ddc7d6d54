"""benchmarks/gpu_suite.py on the CPU (`--device cpu --quick`): the suite's own machinery — parts
as subprocesses with timeouts, the .md files and their headers, skipped CUDA-only steps — and
benchmarks/gpu_decode.py's decode + crop + flip function run with device="cpu".

The figures written here are CPU smoke figures; no test judges a speed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_decode  # noqa: E402


def run_suite(*args, out_dir=None) -> subprocess.CompletedProcess:
    # No GPU for the smoke test even on a machine that has one (tests/test_cuda.py then skips).
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO / "src"))
    flags = [*map(str, args)] + (["--out-dir", str(out_dir)] if out_dir is not None else [])
    return subprocess.run([sys.executable, str(SUITE), *flags], env=env, capture_output=True, text=True, cwd=REPO)


def assert_part_file(path: Path, part_status: str = "ok") -> str:
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# ") and "(cpu, quick)" in lines[0]
    assert "**CPU smoke figures**" in text and "not GPU figures" in text
    assert any(line.startswith("* Device: cpu, ") for line in lines)
    assert any(line.startswith(f"* torch: torch {torch.__version__}") for line in lines)
    assert any(line.startswith("* Command: `python benchmarks/gpu_suite.py --device cpu --quick --parts ")
               for line in lines)
    assert lines[-1].startswith(f"Part status: {part_status}"), lines[-1]
    return text


def test_list_and_bad_part_names():
    listed = run_suite("--list")
    assert listed.returncode == 0
    for part in ("cuda_tests", "cifar_presets", "resnet50_peers", "jpeg_pipeline", "resnetrs_latency", "ddp"):
        assert part in listed.stdout
    bad = run_suite("--device", "cpu", "--parts", "cuda_tests,nope")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_cuda_is_refused_without_a_gpu():
    done = run_suite("--device", "cuda", "--parts", "ddp")
    assert done.returncode == 2 and "--device cpu --quick" in done.stderr


def test_quick_cpu_smoke_of_two_parts(tmp_path):
    done = run_suite("--device", "cpu", "--quick", "--parts", "cuda_tests,resnetrs_latency", out_dir=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[suite] == cuda_tests" in done.stdout and "[resnetrs_latency] $ PYTHONPATH=src python -m resnets bench" \
        in done.stdout  # progress as it goes
    tests = assert_part_file(tmp_path / "cuda_tests_cpu_quick.md", "skipped")
    assert "**all skipped**" in tests and "| skipped |" in tests and "test_sync_batchnorm" in tests
    latency = assert_part_file(tmp_path / "resnetrs_latency_cpu_quick.md")
    assert "| resnetrs50 | 32 | 4 |" in latency and "Command" in latency
    assert "`PYTHONPATH=src python -m resnets bench --model resnetrs50 --image-size 32" in latency
    assert "skipped in --quick" in latency
    summary = (tmp_path / "suite_cpu_quick.md").read_text()
    assert "| cuda_tests | skipped (needs CUDA) |" in summary and "| resnetrs_latency | ok |" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cuda_tests_cpu_quick.md", "resnetrs_latency_cpu_quick.md", "suite_cpu_quick.md"]


def test_a_part_past_its_timeout_is_stopped_and_recorded(tmp_path):
    # --_stall: the part waits 120 s before measuring, so it is still running at 4 s on any machine.
    done = run_suite("--device", "cpu", "--quick", "--parts", "cifar_presets", "--timeout", 4, "--_stall", 120,
                     out_dir=tmp_path)
    assert done.returncode == 1
    assert "TIMED OUT" in (tmp_path / "cifar_presets_cpu_quick.md").read_text()
    assert "| cifar_presets | TIMED OUT after" in (tmp_path / "suite_cpu_quick.md").read_text()


@pytest.mark.slow
def test_quick_cpu_smoke_of_every_part(tmp_path):
    done = run_suite("--device", "cpu", "--quick", out_dir=tmp_path)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert_part_file(tmp_path / "cuda_tests_cpu_quick.md", "skipped")
    presets = assert_part_file(tmp_path / "cifar_presets_cpu_quick.md")
    assert "| cifar10-resnet20x1 | fp32 | eager |" in presets and "| 4,545 |" in presets
    peers = assert_part_file(tmp_path / "resnet50_peers_cpu_quick.md")
    assert "| eager |" in peers and "torch.compile variant" in peers
    jpeg = assert_part_file(tmp_path / "jpeg_pipeline_cpu_quick.md")
    assert "* skipped: decoding on the GPU (nvjpeg) (needs CUDA)" in jpeg
    assert "same seed gives the same batch True" in jpeg and "| `resnets train` JPEG-folder pipeline" in jpeg
    assert_part_file(tmp_path / "resnetrs_latency_cpu_quick.md")
    ddp = assert_part_file(tmp_path / "ddp_cpu_quick.md")
    assert "| torchrun, 1 process | yes (world_size 1) | none |" in ddp
    assert "forced into a gloo process group | yes (world_size 1) | gloo, world size 1 |" in ddp
    summary = (tmp_path / "suite_cpu_quick.md").read_text()
    assert summary.count("| ok |") == 5


# ---------------------------------------------------------------- gpu_decode on the CPU

def test_decode_crop_flip_is_a_pure_function_of_the_seed(tmp_path):
    paths = gpu_decode.make_jpeg_folder(tmp_path / "imagenet", 6, n_classes=3)
    assert len(paths) == 6 and all(p.parent.parent.name == "train" for p in paths)
    assert sorted(p.name for p in (tmp_path / "imagenet" / "val").iterdir()) == sorted(
        p.name for p in (tmp_path / "imagenet" / "train").iterdir())
    assert gpu_decode.list_train_jpegs(tmp_path / "imagenet") == sorted(paths)
    encoded = gpu_decode.read_encoded(paths)

    def batch(seed, iteration):
        generator = gpu_decode.batch_generator(seed, iteration)
        return gpu_decode.decode_crop_flip(encoded, image_size=24, generator=generator, device="cpu")

    x = batch(0, 5)
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, batch(0, 5)) and not torch.equal(x, batch(0, 6)) and not torch.equal(x, batch(1, 5))
    # Normalized with ImageNet's statistics: pixel values 0..255 map into this range.
    assert x.min() >= (0 - 0.485) / 0.229 - 1e-5 and x.max() <= (1 - 0.406) / 0.225 + 1e-5


def test_random_resized_crop_parameters_stay_inside_the_image():
    generator = torch.Generator().manual_seed(0)
    for height, width in [(375, 500), (500, 333), (10, 200), (7, 7)]:
        for _ in range(50):
            top, left, h, w = gpu_decode.rrc_params(height, width, generator)
            assert 0 <= top and 0 <= left and 0 < h and 0 < w
            assert top + h <= height and left + w <= width


def test_a_plain_colour_comes_out_as_its_normalized_value():
    colour = torch.tensor([200, 100, 50], dtype=torch.uint8)
    images = [colour.view(3, 1, 1).expand(3, h, w).contiguous() for h, w in [(40, 30), (17, 64)]]
    out = gpu_decode.crop_flip_normalize(images, image_size=12, generator=torch.Generator().manual_seed(1))
    expected = [(c / 255 - m) / s for c, m, s in zip((200, 100, 50), gpu_decode.IMAGENET_MEAN, gpu_decode.IMAGENET_STD)]
    torch.testing.assert_close(out, torch.tensor(expected).view(1, 3, 1, 1).expand(2, 3, 12, 12), rtol=0, atol=1e-5)
