#!/usr/bin/env bash
# Runs timm's own model test suite (tests/test_models.py from the source release of the
# installed timm version) on every model we register (ppconvmixer_*, shakedrop_pyramidnet*,
# adaptnet_*_shakedrop_pyramidnet*), with our plugin imported (-p).
# Usage: scripts/run_timm_model_tests.sh PYTHON WORKDIR
set -euo pipefail
python=${1:-python}
if [[ "$python" == */* ]]; then  # absolute, without resolving the venv's symlink
    python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
workdir=${2:-.cache/timm-suite}
version=$("$python" -c 'import timm; print(timm.__version__)')
src="$workdir/timm-$version"
if [ ! -f "$src/tests/test_models.py" ]; then
    mkdir -p "$workdir"
    "$python" -m pip download -q --no-binary :all: --no-deps "timm==$version" -d "$workdir"
    tar -xzf "$workdir/timm-$version.tar.gz" -C "$workdir" "timm-$version/tests" "timm-$version/pyproject.toml"
fi
# Our cfgs are fixed_input_size, so the 224x224 models (768_32, 1536_20) run at full size, and
# on a loaded 2-core machine their backward tests outlast timm's limits (120 s, some hard-coded):
# scripts/timm_suite_timeouts.py raises every test's limit to PPCM_TIMM_SUITE_TIMEOUT (and timm's
# own TIMEOUT variable to the same), so a slow machine does not fail a correct model, and a hang
# still ends. No test is deselected for time (the one deselection below is by design).
export PPCM_TIMM_SUITE_TIMEOUT=${PPCM_TIMM_SUITE_TIMEOUT:-1200}
export TIMEOUT=${TIMEOUT:-$PPCM_TIMM_SUITE_TIMEOUT}
plugins="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$plugins${PYTHONPATH:+:$PYTHONPATH}"
# Run from a folder that holds only the tests, so `import timm` is the installed timm.
suite="$workdir/suite-$version"
rm -rf "$suite" && mkdir -p "$suite" && cp -r "$src/tests" "$suite/"
cp "$src/pyproject.toml" "$suite/"  # timm's pytest markers
# timm's test_model_load_pretrained creates every pretrained tag with pretrained=True and no
# other arguments: the key-bound tags (ppconvmixer_*.in1k) refuse that by design (they need the
# user's key= and timm's plain weights from the network); tests/test_zoo.py loads them offline.
ours="(ppconvmixer or pyramidnet) and not (test_model_load_pretrained and in1k)"
# Every selected test must pass, and each family must have passed tests: timm skips a test whose
# model is above its size limits ("Fixed input size model > limit.", which pytest counts as no
# failure), and a renamed model or a filter typo would pass with zero tests. So the run fails on
# any failed, erroring or skipped test, and on fewer passed tests of a family than its minimum.
report="$(cd "$suite" && pwd)/junit.xml"
status=0
(cd "$suite" && "$python" -m pytest -p timm_ppconvmixer -p timm_suite_timeouts \
    tests/test_models.py -k "$ours" -q -p no:cacheprovider --junit-xml="$report") || status=$?
"$python" - "$report" ppconvmixer=30 pyramidnet=70 <<'CHECK'
import sys
import xml.etree.ElementTree as ET

report, minimums = sys.argv[1], {f: int(n) for f, n in (a.split("=") for a in sys.argv[2:])}
outcomes = {"failure": "failed", "error": "errors", "skipped": "skipped"}
counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
passed = dict.fromkeys(minimums, 0)
for case in ET.parse(report).getroot().iter("testcase"):
    outcome = next((outcomes[c.tag] for c in case if c.tag in outcomes), "passed")
    counts[outcome] += 1
    for family in passed:
        passed[family] += outcome == "passed" and family in case.get("name", "")
families = ", ".join(f"{n} {f}" for f, n in passed.items())
print(f"timm's model suite: {counts['passed']} passed ({families})")
problems = [f"{counts[k]} {k}" for k in ("failed", "errors", "skipped") if counts[k]]
problems += [f"only {passed[f]} {f} tests passed, expected at least {n}"
             for f, n in minimums.items() if passed[f] < n]
if problems:
    sys.exit(f"timm's model suite: {'; '.join(problems)} (every test: {report})")
CHECK
exit "$status"
