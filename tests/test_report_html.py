"""`resnets report RUNS --html FILE` on tiny real runs (written by `resnets train` and `resnets
eval`): the page's structure, that it is self-contained, and (slow) that Chromium renders it."""
from __future__ import annotations

import base64
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from resnets import cli, report
from resnets.config import TrainConfig
from resnets.html_report import build_html, cell_html, table_html
from resnets.report import Table
from resnets.train import train

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_run(path: Path, **overrides) -> Path:
    cfg = dict(data="digits", model="resnet20", iters="4", batch_size=32, eval_every="2", image_size=16,
               out=str(path), progress=False, augment="crop", device="cpu", log_every=1)
    cfg.update(overrides)
    train(TrainConfig(**cfg))
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """Two seeds of a deterministic ResNet-20 (one evaluated with corruptions, a shifted set and
    OOD data, both with saved predictions) and an MC-dropout run evaluated only once, at its end."""
    root = tmp_path_factory.mktemp("html") / "runs"
    det0 = tiny_run(root / "det" / "0", seed=0)
    det1 = tiny_run(root / "det" / "1", seed=1)
    tiny_run(root / "mcdropout" / "0", method="mcdropout", dropout=0.1, mc_samples=2, eval_every="4")
    assert cli.main(["eval", str(det0), "--device", "cpu", "--corruptions", "gaussian_noise,contrast",
                     "--severities", "1,3", "--shift-data", "synthetic", "--ood-data", "synthetic",
                     "--save-predictions", str(det0 / "predictions.npz")]) == 0
    assert cli.main(["eval", str(det1), "--device", "cpu", "--save-predictions", str(det1 / "predictions.npz")]) == 0
    return root


@pytest.fixture(scope="module")
def page(runs_root: Path) -> Path:
    out = runs_root.parent / "site" / "report.html"
    assert cli.main(["report", str(runs_root), "--html", str(out)]) == 0
    return out


class Page(HTMLParser):
    """The parts of the page the tests read: tables (class, rows of cell text), images, and
    every attribute value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.images: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.attributes += [(tag, k, v or "") for k, v in attrs.items()]
        if tag == "table":
            self.tables.append(dict(cls=attrs.get("class"), header=[], rows=[]))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if table["header"]:
                table["rows"].append(self._row)
            else:
                table["header"] = self._row
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Page:
    parser = Page()
    parser.feed(text)
    parser.close()
    return parser


def test_page_has_one_table_per_seed_table_with_its_rows(runs_root: Path, page: Path):
    parsed = parse(page.read_text())
    expected = report.build_tables(report.find_runs(runs_root), link_base=page.parent)
    seed_tables = [t for t in parsed.tables if t["cls"] == "seed-table"]
    assert len(seed_tables) == len(expected) >= 1
    for html_table, table in zip(seed_tables, expected):
        assert html_table["header"] == table.columns
        assert len(html_table["rows"]) == len(table.rows)
        for html_row, row in zip(html_table["rows"], table.rows):
            for got, cell in zip(html_row, row):
                if not re.search(r"[`\[<]", cell):  # plain cells read back as written
                    assert got == cell
    # Two configurations: the deterministic seeds (one row) and the MC-dropout run.
    (methods,) = seed_tables
    assert [row[0] for row in methods["rows"]] == ["Deterministic (2 seeds)", "MC Dropout"]
    # Links to run files are relative to the page's folder and lead to the files.
    links = [v for tag, k, v in parsed.attributes if tag == "a" and k == "href" and not v.startswith("#")]
    assert links and all((page.parent / link).resolve().is_file() for link in links)


def test_page_embeds_its_figures_and_loads_nothing(runs_root: Path, page: Path):
    text = page.read_text()
    parsed = parse(text)
    assert not re.search(r"https?://", text)
    assert "script" not in parsed.tags and "iframe" not in parsed.tags
    for tag, name, value in parsed.attributes:
        if name in ("src", "href") and not value.startswith(("data:", "#")):
            assert tag == "a" and "://" not in value, (tag, name, value)
    # Curves of both configurations and the reliability diagram of the seeds with predictions.
    assert len(parsed.images) == 3
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert text.count('<figure class="curves"') == 2 and text.count('<figure class="reliability"') == 1


def test_page_has_the_eval_json_tables(page: Path):
    tables = [t for t in parse(page.read_text()).tables if t["cls"] == "eval-table"]
    assert len(tables) == 5
    selective = next(t for t in tables if "AURC" in t["header"])
    assert [row[0] for row in selective["rows"]] == ["det/0", "det/1"]
    assert all(0 <= float(row[2]) <= 1 and float(row[7]) >= 0 for row in selective["rows"])  # AURC, THR cov.
    evaluation = next(t for t in tables if "Weights" in t["header"])
    assert [row[0] for row in evaluation["rows"]] == ["det/0", "det/1"]
    corruptions = next(t for t in tables if t["header"][0] == "Corruption")
    assert corruptions["header"][1:3] == ["acc % s1", "acc % s3"]
    assert [row[0] for row in corruptions["rows"]] == ["gaussian_noise", "contrast", "all (mean)"]
    shift = next(t for t in tables if "Shift data / split" in t["header"])
    assert shift["rows"][0][:2] == ["det/0", "synthetic/test"]
    ood = next(t for t in tables if "AUROC" in t["header"])
    assert [row[4] for row in ood["rows"]] == ["max_prob", "entropy", "max_logit", "energy"]
    assert all(0 <= float(row[5]) <= 1 for row in ood["rows"])


def test_text_is_escaped():
    assert cell_html("a <b> & `<c>` [x<y](./a%20b.log) <sup>2</sup> \\| z") == \
        'a &lt;b&gt; &amp; <code>&lt;c&gt;</code> <a href="./a%20b.log">x&lt;y</a> <sup>2</sup> | z'
    # Only relative, file and http(s) targets become links; others are shown as text.
    assert "href" not in cell_html("[ckpt](javascript:alert(1))")
    assert cell_html("[ckpt](gs://bucket/c.pt)") == "ckpt (<code>gs://bucket/c.pt</code>)"
    table = Table("<script>alert(1)</script>", ["<th>"], ["l"], rows=[["<td>\"q\"</td>"]])
    text = table_html(table)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;td&gt;&quot;q&quot;&lt;/td&gt;" in text and "&lt;th&gt;" in text


def test_build_html_without_figures(runs_root: Path):
    text = build_html(report.find_runs(runs_root), root=runs_root, figures=[])
    parsed = parse(text)
    assert not parsed.images and 'id="curves"' not in text
    assert any(t["cls"] == "seed-table" for t in parsed.tables)


# ---------------------------------------------------------------- in a browser

def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_data}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HOME=str(user_data)))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_chromium_renders_the_page(page: Path, tmp_path: Path):
    from PIL import Image

    url = page.resolve().as_uri()
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, user_data=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    # Every console message (a blocked or failed load, a CSP violation) is logged as CONSOLE.
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Refused to" in line]
    assert not console, console

    dom = chromium("--dump-dom", url, user_data=tmp_path / "profile2")
    assert dom.returncode == 0
    assert dom.stdout.count('<table class="seed-table"') == 1 and "Deterministic (2 seeds)" in dom.stdout

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        gray = image.convert("L")
        pixels = gray.load()
        # Not blank: ink across the page, and the results table near the top (rows of dark text
        # and its grid lines in the first 400 px).
        dark = sum(1 for y in range(0, 2000, 4) for x in range(0, 1280, 4) if pixels[x, y] < 128)
        assert dark > 0.01 * (2000 // 4) * (1280 // 4)
        top_rows = [y for y in range(150, 400) if sum(1 for x in range(0, 1280, 2) if pixels[x, y] < 200) > 20]
        assert len(top_rows) > 20
