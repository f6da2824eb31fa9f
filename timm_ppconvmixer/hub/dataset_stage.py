"""Staging an encrypted dataset before it leaves the machine: the parquet shards exactly as
``datasets``' ``push_to_hub`` writes them, decoded views of what parquet may compress (for the
leak guard), a check that the images really are encrypted with the key, and a check after the
push that the Hub holds exactly the staged bytes."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..cipher import decrypt, encrypt
from ..images import mode_for_channels
from ..key import SchemeKey
from .errors import HubError

__all__ = [
    "card_metadata",
    "check_encrypted_with",
    "commit_operations",
    "image_columns",
    "num_shards",
    "rows_that_do_not_decrypt",
    "stage_split",
    "verify_uploaded",
]

DATA_DIR = "data"  # where datasets' push_to_hub puts the shards
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIXEL_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"PLTE"}


def _nbytes(ds) -> int:
    estimate = getattr(ds, "_estimate_nbytes", None)  # what push_to_hub itself sizes shards by
    return int(estimate()) if callable(estimate) else int(ds.data.nbytes)


def num_shards(ds, max_shard_size: int | str) -> int:
    """Shards of at most ``max_shard_size`` (``"500MB"`` or bytes), as ``datasets`` counts.

    Example:
        >>> num_shards(ds, "500MB")  # doctest: +SKIP
        1
    """
    from datasets.utils.py_utils import convert_file_size_to_int

    return max(1, math.floor(_nbytes(ds) / convert_file_size_to_int(max_shard_size)) + 1)


def _writer_batch_size(ds) -> int:
    from datasets.arrow_writer import (
        get_writer_batch_size_from_data_size,
        get_writer_batch_size_from_features,
    )

    return get_writer_batch_size_from_features(ds.features) or (
        get_writer_batch_size_from_data_size(len(ds), _nbytes(ds))
    )


def _png_side_chunks(data: bytes, where: str) -> bytes:
    """Every PNG chunk but the pixel data (text, EXIF, ...; zTXt/iTXt decompressed): where a
    file could carry extra text inside an image. Other formats are refused."""
    if not data.startswith(_PNG_SIGNATURE):
        raise HubError(
            f"{where}: not a PNG image; encrypted images must be stored losslessly as PNG "
            "(encrypt with timm_ppconvmixer.data.datasets.encrypt_dataset or ppconvmixer encrypt)"
        )
    out, pos = bytearray(), len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind in _PIXEL_CHUNKS:
            continue
        out += kind + body + _decompressed_text(kind, body)
    return bytes(out)


def _decompressed_text(kind: bytes, body: bytes) -> bytes:
    """The text of a compressed zTXt or iTXt chunk (PNG spec 11.3.3), else nothing."""
    _, _, rest = body.partition(b"\0")
    if kind == b"zTXt":
        packed = rest[1:]
    elif kind == b"iTXt" and rest[:1] == b"\1":
        packed = rest[2:].split(b"\0", 2)[-1]
    else:
        return b""
    try:
        return zlib.decompressobj().decompress(packed, 1 << 24)
    except zlib.error:
        return b""


def _write_views(parquet: Path, views: Path) -> None:
    """Decoded copies of one shard for the leak guard, which reads numbers as text only in text
    files and parquet compresses its pages: the schema's metadata (the features), every
    non-image column as JSON, and the image columns' PNG side chunks, raw and as text."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    stem = views / parquet.stem
    metadata = {k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in (table.schema.metadata or {}).items()}  # fmt: skip
    Path(f"{stem}.schema.json").write_text(json.dumps(metadata), encoding="utf-8")
    for name in table.column_names:
        values = table.column(name).to_pylist()
        is_image = values and isinstance(values[0], dict) and "bytes" in values[0]
        if not is_image:
            text = json.dumps(values, default=str)
            Path(f"{stem}.{name}.json").write_text(text, encoding="utf-8")
            continue
        chunks = b"\n".join(
            _png_side_chunks(v["bytes"], f"{parquet.name} column {name!r} row {i}")
            for i, v in enumerate(values)
            if v is not None and v.get("bytes") is not None
        )
        Path(f"{stem}.{name}.chunks").write_bytes(chunks)
        Path(f"{stem}.{name}.chunks.txt").write_text(chunks.decode("latin-1"), encoding="utf-8")
        paths = [v.get("path") for v in values if v is not None]
        Path(f"{stem}.{name}.paths.json").write_text(json.dumps(paths), encoding="utf-8")


def stage_split(ds, split: str, shards: int, stage: Path, views: Path) -> dict[str, str]:
    """Write ``ds`` as ``data/{split}-{i:05d}-of-{n:05d}.parquet`` below ``stage`` the way
    ``Dataset.push_to_hub(num_shards=...)`` writes its shards (same rows per shard, external
    files embedded, same row-group size), plus decoded views below ``views``. Returns
    ``{path in repo: sha256}``.

    Example:
        >>> stage_split(ds, "train", 2, Path("stage"), Path("views"))  # doctest: +SKIP
        {'data/train-00000-of-00002.parquet': '5d1c...', ...}
    """
    from datasets.features.features import require_decoding
    from datasets.table import embed_table_storage

    batch = _writer_batch_size(ds)
    embed = any(require_decoding(f, ignore_decode_attribute=True) for f in ds.features.values())
    (stage / DATA_DIR).mkdir(parents=True, exist_ok=True)
    views.mkdir(parents=True, exist_ok=True)
    digests = {}
    for index in range(shards):
        shard = ds.shard(num_shards=shards, index=index, contiguous=True)
        if embed:
            fmt = shard.format
            shard = shard.with_format("arrow").map(
                embed_table_storage, batched=True, batch_size=batch, keep_in_memory=True
            )
            shard = shard.with_format(**fmt)
        name = f"{DATA_DIR}/{split}-{index:05d}-of-{shards:05d}.parquet"
        shard.to_parquet(str(stage / name), batch_size=batch)
        digests[name] = hashlib.sha256((stage / name).read_bytes()).hexdigest()
        _write_views(stage / name, views)
    return digests


def card_metadata(dd, staged: Mapping[str, str], stage: Path) -> dict:
    """The ``configs`` and ``dataset_info`` YAML that ``datasets`` reads from a dataset card,
    for the staged shards, built with ``datasets``' own classes as its ``push_to_hub`` builds
    them (one ``default`` config, ``data/{split}-*`` per split).

    Example:
        >>> card_metadata(dd, staged, Path("stage"))["configs"]  # doctest: +SKIP
        [{'config_name': 'default', 'data_files': [{'split': 'train', 'path': 'data/train-*'}]}]
    """
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    features = next(iter(dd.values())).features
    info = DatasetInfo(config_name="default", features=features, splits=SplitDict(),
                       download_size=0, dataset_size=0)  # fmt: skip
    for name, ds in dd.items():
        info.splits.add(SplitInfo(name=name, num_bytes=_nbytes(ds), num_examples=len(ds)))
        info.dataset_size += _nbytes(ds)
    info.download_size = sum((stage / path).stat().st_size for path in staged)
    info.size_in_bytes = info.download_size + info.dataset_size
    files = [{"split": name, "path": f"{DATA_DIR}/{name}-*"} for name in dd]
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": files}}).to_dataset_card_data(card_data)
    meta = card_data.to_dict()
    return {name: meta[name] for name in ("configs", "dataset_info")}


def commit_operations(api, repo_id: str, stage: Path, revision: str | None) -> list:
    """The commit that uploads the staged folder as it is, byte for byte: every file below
    ``stage`` added (the scanned shards and card themselves), and every data file the
    repository holds that was not staged deleted (an older push's shards)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    files = sorted(p for p in stage.rglob("*") if p.is_file())
    staged = {p.relative_to(stage).as_posix() for p in files}
    adds = [CommitOperationAdd(path_in_repo=p.relative_to(stage).as_posix(), path_or_fileobj=str(p))
            for p in files]  # fmt: skip
    remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    stale = [p for p in remote if p.startswith(f"{DATA_DIR}/") and p not in staged]
    return adds + [CommitOperationDelete(path_in_repo=p) for p in stale]


def verify_uploaded(api, repo_id: str, staged: Mapping[str, str], revision: str | None) -> None:
    """After the push: the Hub's data files are exactly the staged ones, byte for byte (LFS
    sha256), and no other shard of the pushed splits remains."""
    files = api.list_repo_tree(repo_id, path_in_repo=DATA_DIR, repo_type="dataset",
                               revision=revision, recursive=True)  # fmt: skip
    remote = {f.path: f.lfs.sha256 if getattr(f, "lfs", None) else None for f in files
              if hasattr(f, "size")}  # fmt: skip
    splits = {Path(p).name.split("-")[0] for p in staged}
    stale = sorted(p for p in remote if Path(p).name.split("-")[0] in splits and p not in staged)
    differ = sorted(p for p, digest in staged.items() if remote.get(p) != digest)
    if differ or stale:
        raise HubError(
            f"{repo_id}: the Hub's data files are not the ones scanned before the push "
            f"(differ: {differ[:3]}, unexpected: {stale[:3]}); check the repository and push again"
        )


def _roughness(images: np.ndarray) -> np.ndarray:
    """Per image, the mean squared difference of vertically and horizontally adjacent pixels:
    low for natural images, high for scrambled ones. Squared differences over both axes
    separate the classes clearly, image by image: on all 60,000 Fashion-MNIST training images
    under three keys the stored/decrypted ratio (below) was at most 0.55 for images encrypted
    with the key, at least 1.74 for plain images and at least 0.89 for another key's images."""
    a = images.astype(np.float32)
    return ((a[:, 1:] - a[:, :-1]) ** 2).mean(axis=(1, 2, 3)) + (
        (a[:, :, 1:] - a[:, :, :-1]) ** 2
    ).mean(axis=(1, 2, 3))


# An image "decrypts with the key" when decrypting makes it clearly smoother than it is as
# stored. Plain images get rougher (decrypting scrambles them), another key's stay as rough.
DECRYPTS_BELOW = 0.8
LOOKS_ENCRYPTED_ABOVE = 0.7


def rows_that_do_not_decrypt(images: np.ndarray, key: SchemeKey) -> np.ndarray:
    """Indices into ``images`` ((B, H, W, C) uint8, the key's geometry) of the images that do
    not decrypt with ``key``: those whose decryption is not clearly smoother than the stored
    image (a tie, e.g. an image the cipher leaves unchanged, counts as not decrypting). For
    ``pe-per-image``, which nothing decrypts: the images that do not look encrypted.

    Example:
        >>> rows_that_do_not_decrypt(encrypt(plain, key, layout="HWC"), key)  # doctest: +SKIP
        array([], dtype=int64)
    """
    as_is = _roughness(images)
    if getattr(key, "per_image", False):
        # pe-per-image: nothing decrypts it, by design. An encrypted image is about as rough as
        # a fresh encryption of itself, a plain one far smoother (20,000 Fashion-MNIST images:
        # at least 0.82 encrypted, at most 0.54 plain)
        again = _roughness(encrypt(images, key, layout="HWC"))
        return np.flatnonzero(~(as_is >= LOOKS_ENCRYPTED_ABOVE * again))
    decrypted = _roughness(decrypt(images, key, layout="HWC"))
    return np.flatnonzero(~(decrypted < DECRYPTS_BELOW * as_is))


def image_columns(ds, image_column: str) -> list[str]:
    """Every column that holds images: ``image_column`` and every ``datasets.Image`` feature
    (an image nested in a list or dict is refused: it could not be checked)."""
    from datasets import Image as ImageFeature

    def holds_image(feature) -> bool:
        if isinstance(feature, ImageFeature):
            return True
        if isinstance(feature, dict):
            return any(holds_image(f) for f in feature.values())
        if isinstance(feature, (list, tuple)):
            return any(holds_image(f) for f in feature)
        inner = getattr(feature, "feature", None)  # List, LargeList, Sequence
        return inner is not None and holds_image(inner)

    columns = [image_column] if image_column in ds.column_names else []
    for name, feature in ds.features.items():
        if isinstance(feature, ImageFeature):
            columns += [name] if name not in columns else []
        elif holds_image(feature):
            raise HubError(
                f"column {name!r} holds images inside a {type(feature).__name__}; only top-level "
                "image columns can be checked for encryption: flatten the column first"
            )
    return columns


def _as_array(image, key: SchemeKey, mode: str) -> np.ndarray | None:
    """The image as (H, W, C) uint8, or None where its size or mode is not the key's."""
    if isinstance(image, dict):  # undecoded {"bytes", "path"}
        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    h, w = key.image_size
    if image is None or image.size != (w, h) or image.mode != mode:
        return None
    return np.asarray(image).reshape(h, w, key.channels)


def _describe_rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:10]))
    return f"{len(rows)} rows ({shown}{', ...' if len(rows) > 10 else ''})"


def check_encrypted_with(
    ds,
    key: SchemeKey,
    image_column: str,
    where: str,
    batch_size: int = 512,
    progress: bool = True,
) -> int:
    """Check EVERY row of every image column: refuse images of another size or mode than
    ``key``'s, and images that do not decrypt with ``key`` (plain images, or another key's;
    :func:`rows_that_do_not_decrypt`). The rows are streamed in batches of ``batch_size``,
    with a progress bar; the error names the split (``where``), the column and the rows.
    Returns the number of images checked.

    Example:
        >>> check_encrypted_with(encrypted_ds, key, "image", "split train")  # doctest: +SKIP
        60000
    """
    from datasets import Image as ImageFeature
    from tqdm.auto import tqdm

    mode = mode_for_channels(key.channels)
    h, w = key.image_size
    checked = 0
    for column in image_columns(ds, image_column):
        wrong_size: list[int] = []
        not_decrypting: list[int] = []
        view = ds.select_columns([column])
        if isinstance(view.features[column], ImageFeature):  # decoded here: less overhead
            view = view.cast_column(column, ImageFeature(decode=False))
        bar = tqdm(total=len(ds), desc=f"checking {where} {column}", unit="img",
                   disable=not progress, leave=False)  # fmt: skip
        for start, batch in zip(
            range(0, len(ds), batch_size), view.iter(batch_size=batch_size), strict=False
        ):
            arrays, rows = [], []
            for offset, image in enumerate(batch[column]):
                array = _as_array(image, key, mode)
                if array is None:
                    wrong_size.append(start + offset)
                else:
                    arrays.append(array)
                    rows.append(start + offset)
            if arrays:
                bad = rows_that_do_not_decrypt(np.stack(arrays), key)
                not_decrypting += [rows[i] for i in bad]
            bar.update(len(batch[column]))
        bar.close()
        checked += len(ds)
        if wrong_size:
            raise HubError(
                f"{where} column {column!r}: {_describe_rows(wrong_size)} are not {w}x{h} "
                f"{mode} images, the size and mode of images encrypted with key "
                f"{key.fingerprint}; encrypt the dataset with this key (encrypt=True, or "
                "ppconvmixer encrypt)"
            )
        if not_decrypting and getattr(key, "per_image", False):
            raise HubError(
                f"{where} column {column!r}: {_describe_rows(not_decrypting)} do not look "
                f"encrypted with {key.fingerprint} (a fresh encryption of them is far rougher "
                "than they are): they are plain images; nothing was uploaded. Encrypt them "
                "(encrypt=True, or ppconvmixer encrypt --scheme pe-per-image)"
            )
        if not_decrypting:
            raise HubError(
                f"{where} column {column!r}: {_describe_rows(not_decrypting)} do not decrypt "
                f"with key {key.fingerprint}: they are plain images or encrypted with another "
                "key; nothing was uploaded. Encrypt them with this key (encrypt=True, or "
                "ppconvmixer encrypt) or pass the key they were encrypted with"
            )
    return checked
