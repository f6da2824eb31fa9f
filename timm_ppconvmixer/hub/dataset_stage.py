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

from ..cipher import decrypt
from ..images import mode_for_channels
from ..key import SchemeKey
from .errors import HubError

__all__ = ["check_encrypted_with", "num_shards", "stage_split", "verify_uploaded"]

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
            "(encrypt with timm_ppconvmixer.data.encrypt_dataset or ppconvmixer encrypt)"
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


def _roughness(images: np.ndarray) -> float:
    """Mean absolute difference of horizontally adjacent pixels: low for natural images,
    high for scrambled ones."""
    a = images.astype(np.int16)
    return float(np.abs(a[:, :, 1:] - a[:, :, :-1]).mean())


def check_encrypted_with(ds, key: SchemeKey, image_column: str, where: str, sample: int = 32):
    """Refuse images of another size or mode than ``key``'s, and images that do not decrypt
    to natural-looking images with ``key`` (plain images, or another key's): decrypting must
    make neighbouring pixels clearly more alike. Looks at the first ``sample`` images. For
    ``pe-per-image``, which nothing decrypts, only the size and mode are checked.

    Example:
        >>> check_encrypted_with(encrypted_ds, key, "image", "train")  # doctest: +SKIP
    """
    h, w = key.image_size
    mode = mode_for_channels(key.channels)
    rows = ds.select(range(min(sample, len(ds))))[image_column]
    arrays = []
    for i, image in enumerate(rows):
        if isinstance(image, dict):  # undecoded {"bytes", "path"}
            image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
        if image.size != (w, h) or image.mode != mode:
            raise HubError(
                f"{where} row {i}: a {image.width}x{image.height} {image.mode} image, but images "
                f"encrypted with key {key.fingerprint} are {w}x{h} {mode}; encrypt the dataset "
                "with this key (encrypt=True, or ppconvmixer encrypt)"
            )
        arrays.append(np.asarray(image).reshape(h, w, key.channels))
    if not arrays or key.per_image:  # pe-per-image: no key decrypts them, by design
        return
    stack = np.stack(arrays)
    as_is, decrypted = _roughness(stack), _roughness(decrypt(stack, key, layout="HWC"))
    if not decrypted < 0.8 * as_is:
        raise HubError(
            f"{where}: the images do not decrypt with key {key.fingerprint} (neighbouring "
            f"pixels differ by {as_is:.1f} as stored and {decrypted:.1f} decrypted): they are "
            "plain images or encrypted with another key; pass encrypt=True (--key encrypts "
            "plain data) or the key they were encrypted with"
        )
