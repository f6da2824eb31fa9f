"""The tree shows the architecture: the public API, the rooms of the package, the benchmarks
index, and no words in the product that only make sense to the people who built it."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest
import timm

import timm_ppconvmixer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "timm_ppconvmixer"

# The stable public names: what users import from the package root.
PUBLIC_NAMES = (
    "AdaptNet", "AdaptNetPyramidNet", "AdaptivePermutation", "BlockKey", "CipherInputError",
    "ConversionError", "HardPermutation", "InvalidKeyError", "KEY_BOUND_TAGS", "KeyBoundError",
    "LEAdaptNet", "PPConvMixer", "SchemeKey", "ShakeDrop", "ShakePyramidNet",
    "adaptnet_num_params", "adaptnet_pyramidnet_num_params", "convmixer_num_params", "decrypt",
    "encrypt", "encrypt_model", "generate_key", "harden_permutation", "load_key",
    "permutation_penalty", "ppconvmixer_num_params", "pyramidnet_num_params", "rekey_model",
    "__version__",
)  # fmt: skip


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [ROOT / line for line in out.stdout.splitlines()]


def test_every_public_name_imports_from_the_package_root():
    missing = [name for name in PUBLIC_NAMES if not hasattr(timm_ppconvmixer, name)]
    assert missing == []
    assert set(PUBLIC_NAMES) <= set(timm_ppconvmixer.__all__)


def test_the_conversion_entry_points_at_the_root_are_the_keyed_ones():
    from timm_ppconvmixer.keyed import convert, harden

    assert timm_ppconvmixer.encrypt_model is convert.encrypt_model
    assert timm_ppconvmixer.rekey_model is convert.rekey_model
    assert timm_ppconvmixer.harden_permutation is harden.harden_permutation


def test_the_attacks_package_exposes_the_scheme_registry():
    from timm_ppconvmixer.attacks import SCHEME_ATTACKS, attack_for
    from timm_ppconvmixer.schemes import SCHEMES

    assert set(SCHEME_ATTACKS) >= set(SCHEMES)
    assert attack_for("ppconvmixer-le") is SCHEME_ATTACKS["le"]


@pytest.mark.parametrize(
    "old",
    ["convert", "harden", "zoo", "pretrained", "pp_convmixer", "permutation", "folders"],
)
def test_moved_modules_leave_no_alias_at_their_old_path(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"timm_ppconvmixer.{old}")


def test_the_package_root_holds_at_most_ten_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 10, modules


def test_every_registered_architecture_lives_in_models_or_keyed():
    # timm records the module a model was registered from; a network registered elsewhere
    # (the CLI, the Hub code) would hide it from a reader of the tree.
    names = timm.list_models("ppconvmixer*") + timm.list_models("*pyramidnet*")
    files = {
        name: importlib.import_module(timm.models.model_entrypoint(name).__module__).__file__
        for name in names
    }
    outside = {
        name: f
        for name, f in files.items()
        if not (f.startswith(str(PACKAGE / "models")) or f.startswith(str(PACKAGE / "keyed")))
    }
    assert names and outside == {}


def test_benchmarks_are_at_most_twelve_scripts_each_in_the_index():
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    index = (ROOT / "benchmarks" / "README.md").read_text()
    assert len(scripts) <= 12, scripts
    unlisted = [name for name in scripts if f"`{name}`" not in index]
    assert unlisted == []


# Tracker words: the word issue followed by a number or a colon, an opening bracket before it,
# or a hash before a number.
ISSUE_REFERENCE = re.compile(r"\bissues?\s*(?:#?\d|:)|\(issue\b|(?<![\w/&-])#\d{1,3}\b", re.I)


def test_no_issue_number_in_the_product_code_docs_or_tests():
    files = _tracked("*.py", "*.md", "*.yaml", "*.yml", "*.toml", "*.sh", "Makefile")
    files = [f for f in files if f.name != "CHANGELOG.md"]
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ISSUE_REFERENCE.search(line) and "ISSUE_REFERENCE" not in line:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert hits == []
