"""Export and publish the model zoo listed in ``hub/zoo.yaml``.

    python -m hub.publish                        # dry run (default): nothing is uploaded
    python -m hub.publish --push                 # upload every entry; all must be ready
    python -m hub.publish --only NAME --push     # upload some entries
    python hub/publish.py --manifest other.yaml  # the same, as a script

Entries of ``kind: key-bound`` (the tags ``ppconvmixer_*.in1k``) have no weights to publish:
they are timm's own plain weights, converted on the user's machine under the user's key at
load (``timm_ppconvmixer/keyed/zoo.py``). The publisher checks them against the registry and lists
them as such; nothing key-derived is ever uploaded for them.

For each entry the dry run loads the weights, exports them exactly as they would be uploaded
(``model.safetensors``, ``config.json``, ``README.md`` model card), runs the leak guard, and
shows the files with their sizes, the guard's result and the start of the card. An entry that
is not ready (weights not there yet, fingerprint or metrics missing, key material found) is
reported with what to do; ``--push`` then uploads nothing. Uploads use the real
``huggingface_hub`` client (``HF_TOKEN`` / ``--token``, ``HF_ENDPOINT``) and scan every file
again first. See docs/hub.md.

The card: a weights folder that holds a ``README.md`` ships its card (the package's
``timm_ppconvmixer/keyed/pretrained/*/README.md``, written by the command that wrote the
weights): that card is what is uploaded, byte for byte, once it is what the current code writes
for those weights, that key and the entry's metrics around the card's own notes and recipe
(else the entry is not ready). ``--refresh-cards`` writes such cards again with the current code
(``timm_ppconvmixer.hub.model_card``; the numbers from the metrics file, the prose kept). A
folder without a card gets one from the manifest (``recipe``, ``notes``).

    python -m hub.publish --refresh-cards        # rewrite the shipped cards, then check them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from timm_ppconvmixer.atomic import atomic_write_bytes
from timm_ppconvmixer.hub import (
    HubError,
    export,
    folder_listing,
    load_model,
    recipe_from_file,
    scan_for_key_material,
    upload_model_folder,
)
from timm_ppconvmixer.hub.model_card import card_inputs
from timm_ppconvmixer.hub.model_folder import CARD_FILE
from timm_ppconvmixer.keyed.zoo import KEY_BOUND_TAGS
from timm_ppconvmixer.schemes import SchemeKey, load_key

DEFAULT_MANIFEST = Path(__file__).with_name("zoo.yaml")
ENTRY_FIELDS = {
    "name",
    "repo_id",
    "weights",
    "recipe",
    "dataset",
    "key_fingerprint",
    "key_file",
    "metrics",
    "license",
    "private",
    "revision",
    "allow_key_derived_weights",
    "kind",
    "converts",
    "published_accuracy",
    "plain_images",
    "notes",
    "reproduce",
}
REQUIRED_FIELDS = ("name", "repo_id", "weights")
KEY_BOUND = "key-bound"
# what a key-bound entry states: the tag, timm's plain weights it converts, timm's numbers
KEY_BOUND_FIELDS = {"name", "kind", "converts", "published_accuracy", "license", "private"}


class ManifestError(ValueError):
    """The manifest itself is malformed (as opposed to an entry that is not ready yet)."""


class NotReadyError(Exception):
    """An entry cannot be published yet; the message says why and what to do."""


@dataclass
class Entry:
    """One model of the zoo, with paths resolved against the manifest's ``root``."""

    name: str
    repo_id: str | None
    weights: Path | None
    recipe: Path | None = None
    dataset: str | dict | None = None
    key_fingerprint: str | None = None
    key_file: Path | None = None
    metrics: dict | Path | None = None
    license: str | None = None  # default: the licence the weights' pretrained_cfg names
    private: bool = False
    revision: str | None = None
    allow_key_derived_weights: bool = False
    kind: str = "weights"
    converts: str | None = None
    published_accuracy: dict | None = None
    plain_images: bool = False  # a plain baseline: no key, none recorded in the weights
    notes: str | None = None  # markdown shown under the card's title (the zoo's key warning)
    reproduce: str | None = None  # the command that writes the weights folder

    @property
    def key_bound(self) -> bool:
        return self.kind == KEY_BOUND

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], root: Path, defaults: Mapping) -> Entry:
        """Validate one manifest entry (``defaults`` fill fields it leaves out)."""
        data = {**defaults, **raw}
        where = f"entry {raw.get('name', '?')!r}"
        unknown = sorted(set(data) - ENTRY_FIELDS)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if data.get("kind", "weights") == KEY_BOUND:
            return cls._key_bound(data, where)
        if data.get("kind", "weights") != "weights":
            raise ManifestError(f"{where}: kind must be 'weights' (default) or '{KEY_BOUND}'")
        missing = [k for k in REQUIRED_FIELDS if not data.get(k)]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)}")
        if str(data["repo_id"]).count("/") != 1:
            raise ManifestError(f"{where}: repo_id must be 'namespace/name'")
        metrics = data.get("metrics")
        if metrics is not None and not isinstance(metrics, (Mapping, str)):
            raise ManifestError(f"{where}: metrics must be a mapping or a JSON file path")
        return cls(
            name=str(data["name"]),
            repo_id=str(data["repo_id"]),
            weights=_path(root, data["weights"]),
            recipe=_path(root, data.get("recipe")),
            dataset=data.get("dataset"),
            key_fingerprint=data.get("key_fingerprint"),
            key_file=_path(root, data.get("key_file")),
            metrics=_path(root, metrics) if isinstance(metrics, str) else metrics,
            license=None if data.get("license") is None else str(data["license"]),
            private=bool(data.get("private", False)),
            revision=data.get("revision"),
            allow_key_derived_weights=bool(data.get("allow_key_derived_weights", False)),
            plain_images=_plain_images(data, where),
            notes=None if data.get("notes") is None else str(data["notes"]),
            reproduce=None if data.get("reproduce") is None else str(data["reproduce"]),
        )

    @classmethod
    def _key_bound(cls, data: Mapping[str, Any], where: str) -> Entry:
        """A key-bound tag: checked against the registry; no weights, key or repo of ours."""
        extra = sorted(set(data) - KEY_BOUND_FIELDS)
        if extra:
            raise ManifestError(
                f"{where}: a key-bound entry publishes nothing (the user's machine converts "
                f"timm's weights under the user's key): remove {', '.join(extra)}"
            )
        name = str(data.get("name"))
        if KEY_BOUND_TAGS.get(name) is None or data.get("converts") != KEY_BOUND_TAGS[name]:
            raise ManifestError(
                f"{where}: not a registered key-bound tag converting {data.get('converts')!r}; "
                f"registered: {', '.join(f'{k} <- {v}' for k, v in KEY_BOUND_TAGS.items())}"
            )
        return cls(
            name=name,
            repo_id=None,
            weights=None,
            license=None if data.get("license") is None else str(data["license"]),
            kind=KEY_BOUND,
            converts=str(data["converts"]),
            published_accuracy=data.get("published_accuracy"),
        )


def _plain_images(data: Mapping[str, Any], where: str) -> bool:
    plain = bool(data.get("plain_images", False))
    if plain and (data.get("key_file") or data.get("key_fingerprint")):
        raise ManifestError(f"{where}: plain_images: true takes no key_file or key_fingerprint")
    return plain


def _path(root: Path, value: Any) -> Path | None:
    if value is None:
        return None
    return root / Path(os.path.expandvars(os.path.expanduser(str(value))))


def load_manifest(path: str | os.PathLike) -> list[Entry]:
    """Read and validate a zoo manifest (format: see ``hub/zoo.yaml``).

    Example:
        >>> [e.name for e in load_manifest("hub/zoo.yaml")]  # doctest: +SKIP
        ['ppconvmixer_256_8_fmnist.demo']
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, Mapping) or data.get("version") != 1:
        raise ManifestError(f"{path}: expected a mapping with 'version: 1' and 'models'")
    root = (path.parent / str(data.get("root", "."))).resolve()
    entries = [
        Entry.from_mapping(raw, root, data.get("defaults") or {})
        for raw in data.get("models") or []
    ]
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"{path}: duplicate entry name(s) {', '.join(duplicates)}")
    return entries


@dataclass
class Prepared:
    """An entry exported into a folder, exactly as it would be uploaded."""

    entry: Entry
    folder: Path
    key: SchemeKey | None
    guard: str
    warnings: list[str] = field(default_factory=list)


def _load_metrics(entry: Entry) -> dict | None:
    if not isinstance(entry.metrics, Path):
        return entry.metrics
    try:
        return json.loads(entry.metrics.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotReadyError(f"metrics file {entry.metrics} does not exist") from None
    except json.JSONDecodeError as e:
        raise NotReadyError(f"metrics file {entry.metrics} is not JSON ({e})") from None


def _load_key(entry: Entry) -> SchemeKey | None:
    if entry.key_file is None:
        return None
    if not entry.key_file.is_file():
        raise NotReadyError(
            f"key_file {entry.key_file} does not exist; the leak guard needs the owner's key "
            "(or set key_file: null to run only its key-independent checks)"
        )
    return load_key(entry.key_file)  # any scheme's key file


def _check_complete(entry: Entry, recorded: str | None) -> None:
    """What an entry needs before it may be pushed, beyond what a dry run needs."""
    if entry.key_fingerprint is None and not entry.plain_images:
        raise NotReadyError(
            f"key_fingerprint is not set; the weights record {recorded}: copy it into the "
            "manifest (it pins the weights to their key)"
        )
    if not entry.metrics:
        raise NotReadyError(
            "metrics are not set; add the measured top-1 accuracies before publishing"
        )


def shipped_card(entry: Entry) -> Path | None:
    """The card the entry's weights folder ships (its ``README.md``), if it has one."""
    card = entry.weights / CARD_FILE if entry.weights is not None else None
    return card if card is not None and card.is_file() else None


def prepare(entry: Entry, out_dir: Path, for_push: bool, refresh: bool = False) -> Prepared:
    """Load, check and export one entry into ``out_dir / entry.name`` (leak guard included).
    A weights folder with a card (:func:`shipped_card`) keeps its notes and recipe, and its
    card must be what the export writes, unless ``refresh`` (the export's card then replaces
    it: ``--refresh-cards``).

    Raises :class:`NotReadyError` with the reason and what to do.
    """
    if not entry.weights.is_dir():
        raise NotReadyError(
            f"weights folder {entry.weights} does not exist yet: train the model "
            f"({entry.reproduce or entry.recipe or 'see the recipe'}) and save its model folder "
            "(model.safetensors + config.json, e.g. timm_ppconvmixer.hub.save_model_folder) there"
        )
    shipped = shipped_card(entry)
    if shipped is not None and (entry.recipe or entry.notes):
        raise NotReadyError(
            f"{shipped} is the card this entry ships, with its own notes and recipe: remove "
            "recipe/notes from the manifest entry"
        )
    try:
        model = load_model(entry.weights)
        recorded = getattr(model, "key_fingerprint", None)
        if entry.plain_images and recorded is not None:
            raise NotReadyError(
                f"the manifest says plain_images, but the weights are for key {recorded}"
            )
        if entry.key_fingerprint is not None and recorded != entry.key_fingerprint:
            raise NotReadyError(
                f"the weights are for key {recorded} but the manifest says "
                f"{entry.key_fingerprint}: the weights folder holds another model"
            )
        if for_push:
            _check_complete(entry, recorded)
        key = _load_key(entry)
        if shipped is not None:
            prose = card_inputs(shipped.read_text(encoding="utf-8"))
        else:
            recipe = recipe_from_file(entry.recipe) if entry.recipe else None
            prose = {"notes": entry.notes, "recipe": recipe}
        folder = export(
            model,
            out_dir / entry.name,
            key=key,
            metrics=_load_metrics(entry),
            dataset=entry.dataset,
            license=entry.license,
            repo_id=entry.repo_id,
            model_name=entry.name,
            allow_key_derived_weights=entry.allow_key_derived_weights,
            plain_images=entry.plain_images,
            overwrite=True,  # out_dir is a scratch folder for this run
            **prose,
        )
    except HubError as e:  # includes the leak guard's refusal, which names the file
        raise NotReadyError(str(e)) from e
    if shipped is not None and not refresh:
        _check_shipped_card(entry, shipped, folder / CARD_FILE)
    return Prepared(entry, folder, key, _guard_summary(folder, key), _warnings(entry, key))


def _check_shipped_card(entry: Entry, shipped: Path, written: Path) -> None:
    """The shipped card is uploaded as it is: refuse one the current code would not write."""
    if shipped.read_bytes() == written.read_bytes():
        return
    have = shipped.read_text(encoding="utf-8").splitlines()
    want = written.read_text(encoding="utf-8").splitlines()
    line = next(
        (i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b),
        min(len(have), len(want)),
    )
    raise NotReadyError(
        f"{shipped} is not the card the code writes for these weights and metrics (line "
        f"{line + 1}: {have[line] if line < len(have) else '<end>'!r} where the code writes "
        f"{want[line] if line < len(want) else '<end>'!r}); write it again: python -m "
        f"hub.publish --refresh-cards --only {entry.name}"
    )


def refresh(prepared: Prepared) -> str:
    """Write the entry's shipped card again from its export (atomically); what happened."""
    shipped = shipped_card(prepared.entry)
    text = (prepared.folder / CARD_FILE).read_bytes()
    if shipped.read_bytes() == text:
        return f"  card: {shipped} is up to date"
    atomic_write_bytes(shipped, text)
    return f"  card: wrote {shipped}"


def _guard_summary(folder: Path, key: SchemeKey | None) -> str:
    allowed = scan_for_key_material(folder, key)  # export refused everything else already
    scanned = len(folder_listing(folder))
    if key is None:
        text = f"passed, key-independent checks only ({scanned} files; set key_file to scan)"
    else:
        text = f"passed ({scanned} files scanned for the secrets of key {key.fingerprint})"
    if allowed:
        text += "; accepted key-derived weights: " + "; ".join(map(str, allowed))
    return text


def _warnings(entry: Entry, key: SchemeKey | None) -> list[str]:
    notes = []
    if entry.plain_images:
        notes.append("plain images: no key to scan for (a plain baseline)")
    elif key is None:
        notes.append("no key_file: the leak guard could not look for this key's secrets")
    if entry.key_fingerprint is None and not entry.plain_images:
        notes.append("key_fingerprint not set in the manifest (needed for --push)")
    if not entry.metrics:
        notes.append("no metrics: the card will state no accuracy (needed for --push)")
    return notes


def _size(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1000:.1f} kB" if n < 10**6 else f"{n / 1e6:.1f} MB"


def describe(prepared: Prepared, card_lines: int) -> str:
    """The dry-run report of one ready entry: files, sizes, leak guard, card preview."""
    lines = ["  files:"]
    lines += [f"    {name:<22} {_size(size):>10}" for name, size in folder_listing(prepared.folder)]
    lines.append(f"  leak guard: {prepared.guard}")
    lines += [f"  warning: {w}" for w in prepared.warnings]
    card = (prepared.folder / "README.md").read_text(encoding="utf-8").splitlines()
    shown = card if card_lines <= 0 else card[:card_lines]
    lines.append(f"  card preview ({len(shown)} of {len(card)} lines of README.md):")
    lines += [f"    | {line}" for line in shown]
    return "\n".join(lines)


def _select(entries: list[Entry], only: list[str] | None) -> list[Entry]:
    if not only:
        return entries
    unknown = sorted(set(only) - {e.name for e in entries})
    if unknown:
        raise ManifestError(
            f"no entry named {', '.join(unknown)}; entries: {', '.join(e.name for e in entries)}"
        )
    return [e for e in entries if e.name in only]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hub.publish",
        description="Export every model of the zoo manifest and show what would be uploaded "
        "(dry run), or upload it with --push.",
    )
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="zoo manifest (YAML)")
    parser.add_argument("--only", action="append", metavar="NAME", help="publish only NAME")
    parser.add_argument("--push", action="store_true", help="upload (default: dry run)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--out", help="keep the exported folders here (default: a temp dir)")
    parser.add_argument("--card-lines", type=int, default=40, help="card lines to preview (0: all)")
    parser.add_argument(
        "--refresh-cards",
        action="store_true",
        help="write the cards the weights folders ship again with the current code (numbers "
        "from the metrics files, notes and recipe kept), then report as a dry run",
    )
    return parser


def describe_key_bound(entry: Entry) -> str:
    """What a key-bound entry is: converted on the user's machine, never uploaded."""
    lines = [
        f"  converted on the user's machine: timm's plain {entry.converts} weights (timm's own "
        "loader), exactly, under the user's own key at load; nothing is uploaded",
        f'  load: timm.create_model("{entry.name}", pretrained=True, key="owner.key")',
    ]
    acc = entry.published_accuracy or {}
    if acc:
        shown = ", ".join(f"{k} {v}" for k, v in acc.items() if k != "source")
        lines.append(
            f"  accuracy (timm's, of the plain weights; the same by the identity): {shown}"
        )
        if acc.get("source"):
            lines.append(f"    source: {acc['source']}")
    return "\n".join(lines)


def _prepare_all(entries: list[Entry], out: Path, args) -> tuple[list[Prepared], int]:
    ready, not_ready = [], 0
    for i, entry in enumerate(entries, 1):
        if entry.key_bound:
            print(f"[{i}/{len(entries)}] {entry.name} (key-bound)", flush=True)
            print(describe_key_bound(entry))
            continue
        print(f"[{i}/{len(entries)}] {entry.name} -> {entry.repo_id}", flush=True)
        try:
            prepared = prepare(entry, out, for_push=args.push, refresh=args.refresh_cards)
        except NotReadyError as e:
            not_ready += 1
            print(f"  NOT READY: {e}")
            continue
        ready.append(prepared)
        if args.refresh_cards and shipped_card(entry) is not None:
            print(refresh(prepared))
        print(describe(prepared, args.card_lines))
    return ready, not_ready


def _push_all(ready: list[Prepared], token: str | None) -> None:
    for p in ready:
        upload_model_folder(
            p.folder,
            p.entry.repo_id,
            key=p.key,
            private=p.entry.private,
            revision=p.entry.revision,
            token=token,
            commit_message=f"Publish {p.entry.name} (timm_ppconvmixer zoo)",
            allow_key_derived_weights=p.entry.allow_key_derived_weights,
        )


def run(args: argparse.Namespace, out: Path) -> int:
    entries = _select(load_manifest(args.manifest), args.only)
    ready, not_ready = _prepare_all(entries, out, args)
    key_bound = sum(e.key_bound for e in entries)
    converted = (
        f", {key_bound} key-bound (converted on the user's machine, never uploaded)"
        if key_bound
        else ""
    )
    if not args.push:
        print(
            f"dry run: nothing uploaded; {len(ready)} ready, {not_ready} not ready{converted}. "
            "Run with --push to upload."
        )
        return 0
    if not_ready:
        print(
            f"not pushing anything: {not_ready} entr{'y is' if not_ready == 1 else 'ies are'} "
            "not ready (fix them, or choose the ready ones with --only NAME)",
            file=sys.stderr,
        )
        return 1
    _push_all(ready, args.token)
    print(f"pushed {len(ready)} model(s){converted.replace('never', 'not')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.refresh_cards and args.push:
        print(
            "error: --refresh-cards rewrites the cards in the weights folders: review them "
            "(git diff), then publish with --push",
            file=sys.stderr,
        )
        return 1
    try:
        if args.out:
            return run(args, Path(args.out))
        with tempfile.TemporaryDirectory(prefix="ppconvmixer-zoo-") as tmp:
            return run(args, Path(tmp))
    except (ManifestError, HubError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
