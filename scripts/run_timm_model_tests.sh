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
# Run from a folder that holds only the tests, so `import timm` is the installed timm.
suite="$workdir/suite-$version"
rm -rf "$suite" && mkdir -p "$suite" && cp -r "$src/tests" "$suite/"
cp "$src/pyproject.toml" "$suite/"  # timm's pytest markers
ours="ppconvmixer or pyramidnet"
# each family must be selected: a renamed model or a filter typo would pass with zero tests
for family in "ppconvmixer 30" "pyramidnet 70"; do
    set -- $family
    count=$(cd "$suite" && "$python" -m pytest -p timm_ppconvmixer tests/test_models.py -k "$1" \
        --collect-only -q -p no:cacheprovider 2>/dev/null | grep -c '::' || true)
    if [ "$count" -lt "$2" ]; then
        echo "timm's model suite selected only $count $1 tests; expected at least $2" >&2
        exit 1
    fi
done
cd "$suite" && "$python" -m pytest -p timm_ppconvmixer tests/test_models.py -k "$ours" \
    -q -p no:cacheprovider
