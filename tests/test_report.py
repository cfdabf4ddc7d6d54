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

from resnets import report, report_command
from resnets import runs as run_files
from resnets.config import TrainConfig
from resnets.errors import UserError


def make_run(root: Path, name: str, seed: int, **results) -> Path:
    """A run folder as `resnets train` lays it out (written by its run-directory module), with
    the results given: config.yaml, train.log, metrics.jsonl and results.json."""
    run = root / name / str(seed) / "20240101000000"
    run.mkdir(parents=True)
    cfg = TrainConfig(model=results.get("model", "resnet20"), width=results.get("width", 1),
                      data=results.get("data", "cifar10"), image_size=results.get("image_size", 32),
                      batch_size=256, iters="48k", lr=0.1, weight_decay=1e-3,
                      precision=results.get("precision", "fp32"), method=results.get("method", "deterministic"),
                      ensemble_size=4, seed=seed, preset=None, out=str(run))
    run_files.write_config(run, cfg, dict(num_classes=10, image_size=cfg.image_size, total_iters=48000))
    run_files.append_log(run, "training...")
    base = dict(model=cfg.model, width=cfg.width, data=cfg.data, image_size=cfg.image_size, batch_size=256,
                iters=48000, precision=cfg.precision, method=cfg.method, ensemble_size=4, seed=seed, preset=None,
                device="cpu")
    base.update(results)
    run_files.write_results(run, run_files.RunResults.from_json(base))
    for i in (1000, 2000, 3000):
        run_files.append_metrics(run, i, {"lr": 0.1, "trn/loss": 2.0 / i, "val/acc": 0.5 + i / 10000,
                                          "val/nll": 1.0 / i, "tst/acc": 0.5 + i / 9000, "tst/nll": 1.1 / i,
                                          "tst/ece": 0.01})
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
    train = "Train<sup>1</sup>"  # footnote 1 says what the train figures are
    assert det[f"{train}/Test NLL"] == "- / 0.935" and det[f"{train}/Test Top-1 Accuracy"] == "- / 76.1%"
    assert det["# Parameters"] == "25.6M" and det["Checkpoint"] == "-"
    assert be["Method"].startswith("BatchEnsemble (4 members, 2 seeds)<sup>2</sup>")
    assert be[f"{train}/Test NLL"] == "0.847 ± 0.000 / 0.956 ± 0.007"
    assert be["Train Runtime (hours)"] == "17.5 ± 0.0 (NVIDIA H100 x1)"
    assert be["Test runtime (ms/example)"] == "0.500 ± 0.000"
    assert "ckpt s0" in be["Checkpoint"]
    assert "1. Train: one pass over the training split after training" in text
    assert "2. Each BatchEnsemble member achieves 75.6% test top-1 accuracy" in text

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
    report_command.add_arguments(parser)
    return report_command.run(parser.parse_args(list(argv)))


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
    assert plots == ["0__20240101000000_curves.png", "0__20240101000000_reliability.png"]
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


# ---------------------------------------------------------------- plots of the report

def panel_lines(figure, ylabel: str) -> dict:
    """{legend label: Line2D} of the figure's panel with this y label."""
    (ax,) = [a for a in figure.axes if a.get_ylabel() == ylabel]
    return {line.get_label(): line for line in ax.get_lines()}


def test_seeds_are_one_curve_with_a_band(sweep: Path):
    runs = report.load_runs(report.find_runs(sweep))
    seeds = [r for r in runs if r.path.parts[-3] == "cifar10-resnet20"]
    for offset, run in enumerate(seeds):
        for step in range(100, 3001, 100):
            run_files.append_train_metrics(run.path, step, {"trn/loss": 2.0 / step + offset, "trn/acc": 0.5,
                                                            "lr": 0.1, "img_per_sec": 1000.0,
                                                            "nan_grad_steps": 0})
    panels = report.curve_panels([r.path for r in seeds])
    loss = {s.label: s for s in panels["loss / NLL"]}
    dense = loss["trn/loss"]
    assert dense.dense and dense.seeds == 3 and len(dense.steps) == 30
    assert dense.mean[0] == pytest.approx(2.0 / 100 + 1) and dense.low[0] == pytest.approx(2.0 / 100)
    assert dense.high[0] == pytest.approx(2.0 / 100 + 2)
    assert not loss["val/nll"].dense and loss["val/nll"].steps == [1000, 2000, 3000]

    figures = report.report_figures(runs, sweep)
    by_name = {f.name: f for f in figures}
    assert sorted(by_name) == ["cifar10-resnet20__3_seeds", "cifar10-resnet56-fp16__0__20240101000000",
                               "cifar100-resnet20__0__20240101000000"]
    group = by_name["cifar10-resnet20__3_seeds"]
    assert group.kind == "curves" and "3 seeds" in group.title and len(group.runs) == 3
    line = panel_lines(group.figure, "loss / NLL")["trn/loss"]
    assert list(line.get_xdata()) == dense.steps and list(line.get_ydata()) == dense.mean
    # Runs logged before train_metrics.jsonl existed: the training loss of each evaluation.
    single = panel_lines(by_name["cifar10-resnet56-fp16__0__20240101000000"].figure, "loss / NLL")
    assert list(single["trn/loss (at evaluations)"].get_xdata()) == [1000, 2000, 3000]


def test_once_evaluated_run_has_a_curve(tmp_path: Path):
    """A real run evaluated once (at its end) still gets a curve: its dense training loss, with
    the one evaluation drawn as a marker."""
    from resnets.train import train

    run_dir = tmp_path / "runs" / "once"
    train(TrainConfig(data="digits", model="resnet20", iters="4", batch_size=32, eval_every="4", image_size=16,
                      out=str(run_dir), progress=False, augment="crop", device="cpu", log_every=1))
    assert len(run_files.read_metrics(run_dir)) == 1  # one evaluation
    (figure,) = report.report_figures(report.load_runs([run_dir]), tmp_path / "runs")
    loss = panel_lines(figure.figure, "loss / NLL")
    assert len(loss["trn/loss"].get_xdata()) > 1
    assert list(loss["trn/loss"].get_xdata()) == [1, 2, 3, 4]
    assert list(loss["val/nll"].get_xdata()) == [4] and loss["val/nll"].get_marker() == "o"
    assert len(panel_lines(figure.figure, "learning rate")["lr"].get_xdata()) == 4
    written = report.write_plots([run_dir], tmp_path / "plots", root=tmp_path / "runs")
    assert [p.name for p in written] == ["once_curves.png"]


def test_one_reliability_diagram_per_method(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name, method, seeds in (("det", "deterministic", (0, 1)), ("be", "batchensemble", (0,))):
        for seed in seeds:
            run = make_run(tmp_path, name, seed, method=method, **{"tst/acc": 0.9})
            probs = rng.dirichlet(np.ones(10), size=40).astype(np.float32)
            np.savez(run / "predictions.npz", probs=probs, labels=np.arange(40) % 10)
    figures = [f for f in report.report_figures(report.load_runs(report.find_runs(tmp_path)), tmp_path)
               if f.kind == "reliability"]
    assert len(figures) == 2
    det, be = figures
    assert "Deterministic" in det.title and "predictions of 2 seeds pooled" in det.title
    assert "BatchEnsemble" in be.title
    assert sum(p.get_height() for p in det.figure.axes[1].containers[0]) == 80  # both seeds' samples
    assert "ECE = " in det.figure.axes[0].get_title()
