"""`resnets report` on run folders written by hand in the layout `resnets train` produces."""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from resnets import report
from resnets.errors import UserError


def make_run(root: Path, name: str, seed: int, **results) -> Path:
    """A run folder: config.yaml, train.log, metrics.jsonl and results.json."""
    run = root / name / str(seed) / "20240101000000"
    run.mkdir(parents=True)
    config = dict(model=results.get("model", "resnet20"), width=results.get("width", 1),
                  data=results.get("data", "cifar10"), image_size=results.get("image_size", 32),
                  batch_size=256, iters="48k", lr=0.1, weight_decay=1e-3,
                  precision=results.get("precision", "fp32"), method=results.get("method", "deterministic"),
                  ensemble_size=4, seed=seed, preset=None, out=str(run))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "train.log").write_text("training...\n")
    base = dict(model=config["model"], width=config["width"], data=config["data"],
                image_size=config["image_size"], batch_size=256, iters=48000, precision=config["precision"],
                method=config["method"], ensemble_size=4, seed=seed, preset=None, device="cpu")
    base.update(results)
    (run / "results.json").write_text(json.dumps(base))
    metrics = [{"iter": i, "lr": 0.1, "trn/loss": 2.0 / i, "val/acc": 0.5 + i / 10000, "val/nll": 1.0 / i,
                "tst/acc": 0.5 + i / 9000, "tst/nll": 1.1 / i, "tst/ece": 0.01} for i in (1000, 2000, 3000)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def parse_tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables back into rows of {column: cell}, keyed by their ### heading."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, columns = None, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            heading, columns = line[4:].strip(), None
            tables[heading] = []
        elif line.startswith("|") and heading is not None:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if columns is None:
                columns = cells
            elif not set("".join(cells)) <= set("-: "):
                tables[heading].append(dict(zip(columns, cells)))
    return tables


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two CIFAR-10 configs (one with three seeds) and one CIFAR-100 run."""
    root = tmp_path / "runs"
    for seed, (val, tst, nll) in zip((0, 1, 2), [(0.921, 0.924, 0.278), (0.925, 0.920, 0.290), (0.919, 0.927, 0.281)]):
        make_run(root, "cifar10-resnet20", seed, **{"val/acc": val, "tst/acc": tst, "tst/nll": nll,
                                                    "params": 272474, "iter_per_min": 4545.2 + seed,
                                                    "nan_grad_steps": 0})
    make_run(root, "cifar10-resnet56-fp16", 0, model="resnet56", precision="fp16",
             **{"val/acc": 0.937, "tst/acc": 0.934, "tst/nll": 0.304, "params": 855770,
                "iter_per_min": 1840, "nan_grad_steps": 3})
    # A run with metrics missing or null: blanks, not a crash.
    make_run(root, "cifar100-resnet20", 0, data="cifar100", **{"val/acc": 0.663, "tst/acc": None,
                                                               "tst/nll": 1.258, "params": 278324})
    return root


def test_seed001_table_matches_results(sweep: Path):
    runs = report.find_runs(sweep)
    assert len(runs) == 5
    text = report.make_report(runs, table="seed001", link_base=sweep.parent)
    tables = parse_tables(text)
    assert list(tables) == ["cifar10_x32", "cifar100_x32"]
    assert "## Results for 32x32 images" in text
    assert re.search(r"\| Depth \| Width \| # Params \| val/acc +\| tst/acc +\| tst/nll +\| misc +\| +\|", text)

    resnet20, resnet56 = tables["cifar10_x32"]
    assert (resnet20["Depth"], resnet20["Width"], resnet20["# Params"]) == ("20", "1", "0.27 M")
    fp16 = json.loads(next((sweep / "cifar10-resnet56-fp16").rglob("results.json")).read_text())
    assert resnet56["Depth"] == "56"
    assert resnet56["# Params"] == f"{fp16['params'] / 1e6:.2f} M"
    for key in ("val/acc", "tst/acc", "tst/nll"):
        assert float(resnet56[key]) == pytest.approx(fp16[key], abs=5e-4)
    assert "`1840 iter/min`" in resnet56["misc"] and "`fp16`" in resnet56["misc"]
    assert "`nan-grads`" in resnet56["misc"]
    # The log link is relative to link_base and points at the run's train.log.
    link = resnet56[""].split("](")[1].rstrip(")")
    assert (sweep.parent / link).resolve() == next((sweep / "cifar10-resnet56-fp16").rglob("train.log")).resolve()

    (cifar100,) = tables["cifar100_x32"]
    assert cifar100["val/acc"] == "0.663"
    assert cifar100["tst/acc"] == ""  # null in results.json
    assert cifar100["tst/nll"] == "1.258"
    assert "iter/min" not in cifar100["misc"]


def test_seeds_are_mean_and_std(sweep: Path):
    text = report.make_report(report.find_runs(sweep), table="seed001")
    row = parse_tables(text)["cifar10_x32"][0]
    for key, values in {"val/acc": [0.921, 0.925, 0.919], "tst/acc": [0.924, 0.920, 0.927],
                        "tst/nll": [0.278, 0.290, 0.281]}.items():
        mean, std = (float(x) for x in row[key].split(" ± "))
        assert mean == pytest.approx(statistics.mean(values), abs=5e-4)
        assert std == pytest.approx(statistics.stdev(values), abs=5e-4)
    assert "`3 seeds`" in row["misc"]
    assert "`4546 iter/min`" in row["misc"]
    assert row[""].count("train.log") == 3 and row[""].count("](") == 3  # one log link per seed
    assert "mean ± sample standard deviation" in text


def test_csv_has_same_rows(sweep: Path):
    runs = report.find_runs(sweep)
    markdown = parse_tables(report.make_report(runs, table="seed001"))
    rows = list(csv.DictReader(io.StringIO(report.make_report(runs, table="seed001", fmt="csv"))))
    assert [r["table"] for r in rows] == ["cifar10_x32", "cifar10_x32", "cifar100_x32"]
    assert [r["val/acc"] for r in rows] == [r["val/acc"] for t in markdown.values() for r in t]
    assert rows[1]["misc"] == "1840 iter/min fp16 nan-grads"
    assert rows[1]["links"].endswith("train.log")
    assert rows[2]["tst/acc"] == "" and rows[2]["tst/nll"] == "1.258"


def test_csv_keeps_columns_a_table_dropped(tmp_path: Path):
    make_run(tmp_path, "in32", 0, data="imagenet32", model="resnet18", **{"val/acc": 0.546})
    make_run(tmp_path, "c10", 0, image_size=64, **{"val/acc": 0.9, "tst/acc": 0.91})
    header = report.make_report(report.find_runs(tmp_path), fmt="csv").splitlines()[0]
    assert header == "table,Depth,Width,# Params,val/acc,tst/acc,tst/nll,misc,links"


def test_seed000_and_seed003_shapes(tmp_path: Path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "in-be", seed, model="resnet50", data="imagenet", image_size=224, method="batchensemble",
                 **{"trn/nll": 0.847, "tst/nll": 0.951 + seed / 100, "trn/acc": 0.792, "tst/acc": 0.765,
                    "tst/top5": 0.93, "train_hours": 17.5, "params": 25_800_000, "member/acc": 0.756,
                    "test_ms_per_example": 0.5, "checkpoint": "checkpoint.pt", "device": "NVIDIA H100 x1"})
    make_run(root, "in-det", 0, model="resnet50", data="imagenet", image_size=224,
             **{"tst/nll": 0.935, "tst/acc": 0.761, "params": 25_557_032})
    (next((root / "in-be").rglob("results.json")).parent / "checkpoint.pt").write_bytes(b"")
    text = report.make_report(report.find_runs(root), table="auto", link_base=tmp_path)
    (table,) = parse_tables(text).values()
    det, be = table
    assert det["Method"] == "Deterministic"
    assert det["Train/Test NLL"] == "- / 0.935" and det["Train/Test Top-1 Accuracy"] == "- / 76.1%"
    assert det["# Parameters"] == "25.6M" and det["Checkpoint"] == "-"
    assert be["Method"].startswith("BatchEnsemble (4 members, 2 seeds)<sup>1</sup>")
    assert be["Train/Test NLL"] == "0.847 ± 0.000 / 0.956 ± 0.007"
    assert be["Train Runtime (hours)"] == "17.5 ± 0.0 (NVIDIA H100 x1)"
    assert be["Test runtime (ms/example)"] == "0.500 ± 0.000"
    assert "ckpt s0" in be["Checkpoint"]
    assert "1. Each BatchEnsemble member achieves 75.6% test top-1 accuracy" in text

    rs = tmp_path / "rs"
    make_run(rs, "rs50", 0, model="resnetrs50", data="imagenet", image_size=160,
             **{"tst/acc": 0.788, "iter_per_min": 200.0})
    (table,) = parse_tables(report.make_report(report.find_runs(rs), link_base=tmp_path)).values()
    assert table[0]["Model"] == "ResNet-RS-50"
    assert table[0]["Input Size"] == "160x160"
    assert table[0]["Latency (s/step)"] == "0.300"
    assert table[0]["Top-1 Accuracy"] == "78.8"
    assert table[0]["Config"].startswith("[config](./rs/rs50/0/") and table[0]["Config"].endswith("config.yaml)")


def test_missing_folder_and_empty_folder(tmp_path: Path):
    with pytest.raises(UserError, match="RUNS_ROOT .*not a folder"):
        report.find_runs(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no runs"):
        report.find_runs(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="results.json"):
        report.make_report([bad])


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.run(parser.parse_args(list(argv)))


def test_cli_writes_report_and_plots(sweep: Path, tmp_path: Path):
    root = sweep / "cifar10-resnet56-fp16"  # one run keeps the plotting quick
    run_dir = next(root.rglob("results.json")).parent
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=50).astype(np.float32)
    np.savez(run_dir / "predictions.npz", probs=probs, labels=np.arange(50) % 10)
    out = tmp_path / "docs" / "results.md"
    assert run_cli(str(root), "--out", str(out), "--plot", str(tmp_path / "plots")) == 0
    (table,) = parse_tables(out.read_text()).values()
    link = table[0][""].split("](")[1].rstrip(")")
    assert (out.parent / link).resolve() == (run_dir / "train.log").resolve()
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["0__20240101000000_acc.png", "0__20240101000000_nll.png", "0__20240101000000_reliability.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)


def test_curves_from_metrics():
    rows = [{"iter": 1000, "trn/loss": 2.0, "val/acc": 0.5, "val/nll": 1.5},
            {"iter": 2000, "trn/loss": 1.0, "val/acc": None, "val/nll": float("nan")}]
    assert report.curves(rows, lambda k: k.endswith("/acc")) == {"val/acc": [(1000, 0.5)]}
    assert report.curves(rows, lambda k: k.endswith("/nll") or k == "trn/loss") == {
        "trn/loss": [(1000, 2.0), (2000, 1.0)], "val/nll": [(1000, 1.5)]}


def test_cli_missing_root_is_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="not a folder"):
        run_cli(str(tmp_path / "missing"))
