"""The docs are a rendering of results/: `make docs-check` (scripts/render_docs.py --check)
passes on the committed tree and fails when one digit of a rendered table or figure is changed
by hand, or when a README Python block raises. Run on copies of the real README, docs/ and
results/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "scripts" / "render_docs.py"
sys.path.insert(0, str(ROOT / "scripts"))
import render_docs  # noqa: E402


def _check(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RENDER), "--check", "--root", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "results", tmp_path / "results")
    return tmp_path


def _first_digit_changed(text: str, span: tuple[int, int]) -> str:
    start, end = span
    region = text[start:end]
    m = re.search(r"\d", region)
    assert m, "the region holds no digit"
    digit = region[m.start()]
    changed = region[: m.start()] + str((int(digit) + 1) % 10) + region[m.start() + 1 :]
    return text[:start] + changed + text[end:]


def _documents_with(pattern: re.Pattern, root: Path) -> list[Path]:
    return [p for p in render_docs.documents(root) if pattern.search(p.read_text())]


def test_the_committed_docs_agree_with_results(tree: Path):
    proc = _check(tree, "--no-blocks")
    assert proc.returncode == 0, proc.stderr
    assert _documents_with(render_docs.TABLE, tree), "no rendered table in README or docs/"
    assert _documents_with(render_docs.FIGURE, tree), "no rendered figure in README or docs/"


@pytest.mark.parametrize("region", ["TABLE", "FIGURE"])
def test_one_digit_changed_in_a_rendered_region_fails_the_check(tree: Path, region: str):
    pattern = getattr(render_docs, region)
    for path in _documents_with(pattern, tree):
        original = path.read_text()
        m = next(pattern.finditer(original))
        path.write_text(_first_digit_changed(original, m.span("body")))
        proc = _check(tree, "--no-blocks")
        assert proc.returncode == 1 and path.name in proc.stderr
        path.write_text(original)


def test_rendering_rewrites_a_stale_table_from_its_results_file(tree: Path):
    name = "_render_test.json"
    rows = [{"n": 1234, "v": {"median": 0.5, "worst": 0.25}}, {"n": 7, "v": {"median": 1.0}}]
    (tree / "results" / name).write_text(json.dumps({"rows": rows}))
    page = tree / "docs" / "zz_render_test.md"
    page.write_text(
        f"<!-- results-table file={name} rows=rows\nN | {{n:,d}}\n"
        "V (%) | {v.median:.1p}[ ({v.worst:.1p})]\nW | {w}\n-->\n"
        "| stale |\n<!-- /results-table -->\n"
        f"Value: <!-- fig file={name} value=rows.0.v.median format=.2f -->9<!-- /fig -->.\n"
        f"Gap: <!-- fig file={name} value=rows.1.v.median minus=rows.0.v.worst format=.2f -->"
        "9<!-- /fig -->.\n"
    )
    assert _check(tree, "--no-blocks").returncode == 1
    subprocess.run([sys.executable, str(RENDER), "--root", str(tree)], check=True)
    text = page.read_text()
    table = "| N | V (%) | W |\n| --- | --- | --- |\n| 1,234 | 50.0 (25.0) | \u2013 |\n"
    assert table + "| 7 | 100.0 | \u2013 |\n" in text
    assert "-->0.50<!-- /fig -->" in text
    assert "format=.2f -->0.75<!-- /fig -->" in text  # 1.0 - 0.25
    assert _check(tree, "--no-blocks").returncode == 0


def test_a_missing_results_file_is_one_clear_error(tree: Path):
    page = tree / "docs" / "zz_missing.md"
    page.write_text("<!-- fig file=nowhere.json value=a -->1<!-- /fig -->\n")
    proc = _check(tree, "--no-blocks")
    assert proc.returncode == 1 and "nowhere.json does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_readme_python_block_that_raises_fails_the_check(tree: Path):
    readme = tree / "README.md"
    ok = "```python\nprint('fine')\n```\n"
    bad = "```python\nraise RuntimeError('the quickstart rotted')\n```\n"
    readme.write_text(ok)
    assert _check(tree).returncode == 0
    readme.write_text(ok + bad)
    proc = _check(tree)
    assert proc.returncode == 1 and "RuntimeError: the quickstart rotted" in proc.stderr
    readme.write_text(ok + "<!-- docs-check: skip (needs a network) -->\n" + bad)
    assert _check(tree).returncode == 0


def test_a_published_run_carries_its_provenance(tmp_path: Path):
    run = tmp_path / "summary.json"
    run.write_text(json.dumps({"eval": {"top1_key": 0.88}, "total_time_s": 270.5, "x": 1}))
    publish = [sys.executable, str(ROOT / "scripts" / "publish_results.py"), str(run)]
    args = ["demo.json", "--command", "python recipes/demo.py", "--into", str(tmp_path)]
    subprocess.run([*publish, *args, "--keep", "eval", "total_time_s"], check=True)
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["eval"] == {"top1_key": 0.88} and "x" not in data
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    prov = data["provenance"]
    assert prov["command"] == "python recipes/demo.py" and prov["commit"] == head.stdout.strip()
    assert prov["machine"]["cpu_count"] >= 1 and prov["machine"]["torch_threads"] >= 1
    assert prov["date"].startswith("20") and "concurrent" in prov
    missing = subprocess.run([*publish, *args, "--keep", "nope"], capture_output=True, text=True)
    assert missing.returncode == 1 and "has no field nope" in missing.stderr
