"""Render every measured table and figure of the README and docs/ from the committed results
files in ``results/``, and check that the docs agree with them.

The docs hold two kinds of marked regions (HTML comments, invisible on the Hub and on GitHub).

A table: the opening comment names the results file, where its rows are and an optional
filter, then one line per column, ``header | template``; the renderer writes the markdown
table between the comment and ``<!-- /results-table -->``::

    <!-- results-table file=security_schemes.json rows=summary where=setting=fmnist28
    Scheme | {scheme}
    K1 (%) | {k1.median:.1p}[ ({k1.worst:.1p})]
    -->
    | Scheme | K1 (%) |
    | --- | --- |
    | blockwise | 100.0 (98.4) |
    <!-- /results-table -->

A figure in prose names the file, the value's path and its format spec; the rendered value
stands between the two comments:
``<!-- fig file=demo.json value=eval.top1_key format=.2p -->88.38<!-- /fig -->``. With
``minus=PATH`` the figure is the value less the one at ``PATH`` of the same file (a gap
between two measured figures).

Templates: ``{path:spec}`` is the value at a dotted path of the row (``k1.median``; an integer
picks a list item) in a Python format spec, where a spec ending in ``p`` is a share shown in
per cent (times 100, fixed point, no sign: ``{x:.1p}`` of 0.987 is ``98.7``) and ``,d`` groups
thousands; ``[...]`` is left out when a value inside it is missing; a cell whose values are all
missing is an en dash. ``where`` keeps rows whose fields equal the given values (``a=x,b=y``).

    python scripts/render_docs.py            # rewrite the marked regions in place
    python scripts/render_docs.py --check    # fail when one differs, and run the README's
                                             # Python blocks (make docs-check)

A Python block of the README preceded by ``<!-- docs-check: skip (why) -->`` is not run; every
other one runs in a fresh interpreter in a temporary folder and must exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DASH = "\u2013"

TABLE = re.compile(
    r"(?P<open><!-- results-table (?P<args>[^\n]*)\n(?P<spec>.*?)-->\n)(?P<body>.*?)"
    r"(?P<close><!-- /results-table -->)",
    re.S,
)
FIGURE = re.compile(r"(?P<open><!-- fig (?P<args>[^>]*?) -->)(?P<body>.*?)(?P<close><!-- /fig -->)")
PY_BLOCK = re.compile(
    r"(?P<skip><!-- docs-check: skip[^>]*-->\s*\n)?```python\n(?P<code>.*?)```", re.S
)


class DocsError(ValueError):
    """A marked region names a results file, row or field that does not exist."""


def documents(root: Path = ROOT) -> list[Path]:
    """The files the renderer owns: the README and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _args(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(text))


def _load(name: str, results: Path, cache: dict[str, Any]) -> Any:
    if name not in cache:
        path = results / name
        if not path.is_file():
            raise DocsError(f"results file {path} does not exist")
        cache[name] = json.loads(path.read_text())
    return cache[name]


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.0.c``); ``None`` where a key is missing."""
    for part in path.split(".") if path else []:
        if isinstance(data, list) and part.lstrip("-").isdigit():
            data = data[int(part)] if -len(data) <= int(part) < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
        if data is None:
            return None
    return data


FIELD = re.compile(r"\{(?P<path>[^{}:]*)(?::(?P<spec>[^{}]*))?\}")
OPTIONAL = re.compile(r"\[(?P<inner>[^\[\]]*)\]")


def render_value(value: Any, spec: str = "") -> str:
    """``value`` in a format spec; a spec ending in ``p`` shows a share in per cent."""
    if spec.endswith("p"):
        return format(100 * float(value), spec[:-1] + "f")
    try:
        return format(value, spec)
    except (TypeError, ValueError) as e:
        raise DocsError(f"value {value!r} does not take the format {spec!r} ({e})") from None


def render_template(template: str, row: Any) -> str:
    """``template`` (see the module docstring) filled from ``row``."""
    fields = list(FIELD.finditer(template))
    if fields and all(lookup(row, m["path"]) is None for m in fields):
        return DASH

    def fill(text: str) -> str | None:  # None when a value inside ``text`` is missing
        matches = list(FIELD.finditer(text))
        values = [lookup(row, m["path"]) for m in matches]
        if any(v is None for v in values):
            return None
        rendered = iter(
            [render_value(v, m["spec"] or "") for v, m in zip(values, matches, strict=True)]
        )
        return FIELD.sub(lambda _: next(rendered), text)

    filled = fill(OPTIONAL.sub(lambda m: fill(m["inner"]) or "", template))
    return DASH if filled is None else filled


def _matches(row: Any, where: str | None) -> bool:
    if not where:
        return True
    for condition in where.split(","):
        field, _, wanted = condition.partition("=")
        if str(lookup(row, field)) != wanted:
            return False
    return True


def render_table(args: dict[str, str], spec: str, results: Path, cache: dict) -> str:
    data = _load(args["file"], results, cache)
    rows = lookup(data, args.get("rows", ""))
    if not isinstance(rows, list):
        raise DocsError(f"{args['file']}: {args.get('rows')!r} is not a list of rows")
    columns = [line.split("|", 1) for line in spec.strip().splitlines()]
    if any(len(c) != 2 for c in columns):
        raise DocsError(f"{args['file']}: each column line is 'header | template'")
    kept = [row for row in rows if _matches(row, args.get("where"))]
    if not kept:
        raise DocsError(f"{args['file']}: no row matches where={args.get('where')}")
    lines = ["| " + " | ".join(h.strip() for h, _ in columns) + " |"]
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    for row in kept:
        cells = [render_template(t.strip(), row) for _, t in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_figure(args: dict[str, str], results: Path, cache: dict) -> str:
    data = _load(args["file"], results, cache)
    value = lookup(data, args["value"])
    if value is None:
        raise DocsError(f"{args['file']}: no value at {args['value']!r}")
    if "minus" in args:  # a difference of two committed figures, never typed by hand
        other = lookup(data, args["minus"])
        if other is None:
            raise DocsError(f"{args['file']}: no value at {args['minus']!r}")
        value = value - other
    return render_value(value, args.get("format", ""))


def render_text(text: str, results: Path = RESULTS, cache: dict | None = None) -> str:
    """``text`` with every marked table and figure rendered from ``results``."""
    cache = {} if cache is None else cache

    def table(m: re.Match) -> str:
        body = render_table(_args(m["args"]), m["spec"], results, cache)
        return m["open"] + body + m["close"]

    def figure(m: re.Match) -> str:
        return m["open"] + render_figure(_args(m["args"]), results, cache) + m["close"]

    return FIGURE.sub(figure, TABLE.sub(table, text))


def stale(paths: Iterable[Path], results: Path = RESULTS) -> list[Path]:
    """The documents whose marked regions differ from what ``results`` renders."""
    cache: dict = {}
    texts = {p: p.read_text() for p in paths}
    return [p for p, text in texts.items() if render_text(text, results, cache) != text]


def python_blocks(text: str) -> list[str]:
    """The README's Python blocks that the check runs (those not marked ``docs-check: skip``)."""
    return [m["code"] for m in PY_BLOCK.finditer(text) if not m["skip"]]


def run_blocks(blocks: list[str], timeout: float = 600) -> list[str]:
    """Run each block in a fresh interpreter in a temporary folder; the failures, described."""
    failures = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for number, code in enumerate(blocks, 1):
        with tempfile.TemporaryDirectory(prefix="docs-check-") as tmp:
            proc = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            failures.append(f"README Python block {number} exited {proc.returncode}: {last}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on a difference; run blocks")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree to render or check")
    parser.add_argument("--no-blocks", action="store_true", help="with --check: skip the blocks")
    args = parser.parse_args(argv)
    paths, results = documents(args.root), args.root / "results"
    try:
        if not args.check:
            for path in paths:
                text = path.read_text()
                new = render_text(text, results)
                if new != text:
                    path.write_text(new)
                    print(f"rendered {path.relative_to(args.root)}")
            return 0
        problems = [
            f"{p.relative_to(args.root)}: a rendered table or figure differs from results/; "
            "run `python scripts/render_docs.py` and commit the result"
            for p in stale(paths, results)
        ]
    except DocsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.no_blocks:
        problems += run_blocks(python_blocks((args.root / "README.md").read_text()))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"docs-check: {len(paths)} documents agree with results/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
