"""Encryption and decryption of images with any scheme's key (``timm_ppconvmixer.schemes``).

Every scheme is a permutation of units plus an inversion mask: the paper's block-wise scheme
(Sec. III-A: block permutation K1, pixel shuffling K2, negative-positive transformation K3),
EtC and PE move and invert bytes; LE and ELE move and invert 4-bit halves. A key compiles its
steps into one flat gather index and one mask (``SchemeKey.unit_plan``); this module applies
them: for every unit of the encrypted image the index says which plain unit it comes from and
the mask whether it is inverted (``v -> 255 - v`` for bytes, ``1 - v`` for floats in [0, 1],
``h -> 15 - h`` for halves). The plan is built once per key, direction, layout and device and
applied to a whole batch at memory speed; there is no loop over blocks or images. ``pe-per-image``
draws a fresh plan per image instead and cannot be decrypted.

Inputs: torch tensors ``(C, H, W)`` or ``(B, C, H, W)``, uint8 or floating in [0, 1] (for LE /
ELE: 8-bit levels k / 255 only), on any device (dtype and device are kept); numpy uint8 arrays;
PIL images. See :func:`encrypt`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image

from .images import IMAGE_MODES
from .key import PerImagePE, SchemeKey

__all__ = [
    "encrypt",
    "decrypt",
    "encrypt_hwc_to_chw",
    "hwc_encryptor",
    "gather_plan",
    "CipherInputError",
]

Layout = Literal["auto", "HWC", "CHW"]
ImageLike = TypeVar("ImageLike", torch.Tensor, np.ndarray, Image.Image)


class CipherInputError(ValueError):
    """The image does not fit the key (size, channels), or its dtype or values are unsupported."""


class _Plan(NamedTuple):
    index: torch.Tensor  # flat gather index over units (bytes, or 4-bit halves), int64
    mask: torch.Tensor  # bool, where the unit is inverted
    xor_units: torch.Tensor  # uint8 0/0xFF (0/0x0F for halves) version of mask: 255 - v == v ^ 255


def _units_per_value(key: SchemeKey) -> int:
    return 8 // key.UNIT_BITS  # 1: the plan moves bytes; 2: it moves 4-bit halves (LE, ELE)


def _plan(key: SchemeKey, decrypt: bool, device: torch.device, source_layout: str) -> _Plan:
    if source_layout not in ("CHW", "HWC"):
        raise ValueError(f"source_layout must be 'CHW' or 'HWC', got {source_layout!r}")
    if key.per_image:
        raise CipherInputError(f"{key.scheme} draws a fresh key per image: it has no plan")
    name = ("cipher-plan", decrypt, source_layout, str(device))
    return key.derived(name, lambda: _build_plan(key, decrypt, device, source_layout))


def _build_plan(key: SchemeKey, decrypt: bool, device: torch.device, source_layout: str) -> _Plan:
    index, mask = key.unit_plan()  # the scheme's steps, compiled (schemes/*.py)
    if decrypt:
        inverse = torch.empty_like(index)
        inverse[index] = torch.arange(index.numel())
        index, mask = inverse, mask[inverse]
    if source_layout == "HWC":
        u, c, (h, w) = _units_per_value(key), key.channels, key.image_size
        value, half = index // u, index % u
        src_c, src_yx = value // (h * w), value % (h * w)
        index = (src_yx * c + src_c) * u + half
    xor = mask.to(torch.uint8) * (255 if key.UNIT_BITS == 8 else 15)
    return _Plan(index.to(device), mask.to(device), xor.to(device))


def gather_plan(
    key: SchemeKey,
    decrypt: bool = False,
    device: torch.device | str = "cpu",
    source_layout: str = "CHW",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, mask)`` such that ``out = flip(x.flatten(-3)[..., index], mask)``.

    ``out`` is always in (C, H, W) order; ``source_layout="HWC"`` indexes a source laid out as
    (H, W, C), which fuses the HWC -> CHW copy of ``ToTensor`` into the encryption gather. For
    decryption the plan is the inverse gather, with the mask moved to plain positions. Kept
    with the key (:meth:`SchemeKey.derived`) per direction, layout and device. The units are
    bytes, or for LE / ELE (``key.UNIT_BITS == 4``) 4-bit halves: byte p is units 2p (upper
    half) and 2p + 1 (lower half).
    """
    plan = _plan(key, decrypt, torch.device(device), source_layout)
    return plan.index, plan.mask


def _check_tensor(x: torch.Tensor, key: SchemeKey) -> None:
    expected = (key.channels, *key.image_size)
    if x.dim() not in (3, 4) or tuple(x.shape[-3:]) != expected:
        raise CipherInputError(
            f"expected an image tensor (C, H, W) or (B, C, H, W) with (C, H, W) = {expected} "
            f"for key {key.fingerprint}, got shape {tuple(x.shape)}; resize/crop to the key's "
            "size and convert to its number of channels first"
        )
    if x.dtype == torch.uint8:
        return
    if not x.is_floating_point():
        raise CipherInputError(
            f"unsupported dtype {x.dtype}: use uint8 in [0, 255] or a floating dtype in [0, 1]"
        )
    if x.numel():
        lo, hi = torch.aminmax(x)
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise CipherInputError(
                f"floating images must lie in [0, 1] (got values in [{lo.item():.4g}, "
                f"{hi.item():.4g}]); encrypt before normalising, e.g. right after ToTensor"
            )


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_PARALLEL_MIN_ELEMENTS = 1 << 20  # below this a thread hand-off costs more than it saves


def _forget_pool_after_fork() -> None:
    # a forked child inherits the pool object but not its threads: map() would wait forever
    # (and a lock held by another thread at the fork would stay locked)
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ppcm-cipher")
        return _POOL


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _cpu_take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[:, index]`` for a contiguous 2-D CPU tensor, fast.

    numpy's ``take`` along an axis runs a tight copy loop (several times faster than torch's
    generic CPU indexing kernels for this shape) and releases the GIL, so large batches are
    split over ``torch.get_num_threads()`` threads. Elements move as same-size integers, which
    keeps the gather bit-exact for every dtype (bfloat16 included).
    """
    as_int = rows.view(_SAME_SIZE_INT[rows.element_size()])
    src, idx = as_int.numpy(), index.numpy()
    out = np.empty_like(src)
    threads = torch.get_num_threads()
    if threads > 1 and src.size >= _PARALLEL_MIN_ELEMENTS:
        pool = _thread_pool(threads)
        if src.shape[0] >= threads:  # split the batch
            parts = np.array_split(np.arange(src.shape[0]), threads)
            jobs = [(src[p[0] : p[-1] + 1], idx, out[p[0] : p[-1] + 1]) for p in parts if p.size]
        else:  # one or few images: split the positions of each
            jobs = [
                (src[r], idx[p[0] : p[-1] + 1], out[r, p[0] : p[-1] + 1])
                for r in range(src.shape[0])
                for p in np.array_split(np.arange(idx.size), threads)
            ]
        list(pool.map(lambda job: np.take(job[0], job[1], axis=-1, out=job[2]), jobs))
    else:
        np.take(src, idx, axis=1, out=out)
    return torch.from_numpy(out).view(rows.dtype)


def _flip(out: torch.Tensor, plan: _Plan) -> torch.Tensor:
    if out.dtype == torch.uint8:
        return out.bitwise_xor_(plan.xor_units)  # one vectorised XOR with a 0/255 (0/15) mask
    return torch.where(plan.mask, 1 - out, out)


def _take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if rows.device.type == "cpu":
        return _cpu_take(rows.contiguous(), index)
    return rows.index_select(1, index)


# CPU lookup tables for the 4-bit halves (one numpy gather each, several times faster than
# shifting, masking and interleaving): byte v -> the pair (v >> 4, v & 15) as two bytes of a
# little-endian uint16, and such a pair of halves -> its byte.
_SPLIT = np.array([(v >> 4) | ((v & 0x0F) << 8) for v in range(256)], dtype="<u2")
_MERGE = np.array([((i & 0xFF) << 4 | i >> 8) & 0xFF for i in range(1 << 16)], dtype=np.uint8)


def _split_halves(rows: torch.Tensor) -> torch.Tensor:
    """(B, N) bytes -> (B, 2N) 4-bit halves, the upper half of each byte first."""
    if rows.device.type == "cpu":
        pairs = np.take(_SPLIT, rows.contiguous().numpy())
        return torch.from_numpy(pairs.view(np.uint8)).view(rows.shape[0], -1)
    return _split_halves_by_shifts(rows)


def _split_halves_by_shifts(rows: torch.Tensor) -> torch.Tensor:
    return torch.stack((rows >> 4, rows & 0x0F), dim=-1).view(rows.shape[0], -1)


def _merge_halves(units: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_split_halves` (every unit below 16)."""
    if units.device.type == "cpu":
        pairs = units.contiguous().numpy().view("<u2")
        return torch.from_numpy(np.take(_MERGE, pairs))
    return _merge_halves_by_shifts(units)


def _merge_halves_by_shifts(units: torch.Tensor) -> torch.Tensor:
    pairs = units.view(units.shape[0], -1, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]


def _exact_bytes(x: torch.Tensor, key: SchemeKey) -> torch.Tensor:
    """Floats in [0, 1] that are 8-bit levels (k / 255 as ToTensor makes them, in any float
    dtype) as uint8, exactly; anything else is refused.

    The 4-bit halves of LE / ELE exist only for 8-bit values. A value counts as level k when it
    is k / 255 rounded to its dtype (for every k and every float dtype that is also what
    ToTensor's float32 division, cast to the dtype, gives: the tests check all 256 levels).
    """
    levels = (x.double() * 255).round()
    if not bool(((levels / 255).to(x.dtype) == x).all()):
        raise CipherInputError(
            f"the {key.scheme} scheme shuffles the 4-bit halves of 8-bit values: floating images "
            "must hold 8-bit levels k / 255 (as ToTensor makes them); pass uint8 or encrypt "
            "before any resize, normalisation or augmentation that leaves the 255-level grid"
        )
    return levels.to(torch.uint8)


def _levels_to_float(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    wide = torch.float64 if dtype == torch.float64 else torch.float32  # ToTensor divides in f32
    return out.to(wide).div_(255).to(dtype)


def _apply_units(rows: torch.Tensor, key: SchemeKey, plan: _Plan) -> torch.Tensor:
    """The gather and XOR over a (B, N) uint8 or float batch, in the plan's units."""
    if key.UNIT_BITS == 8:
        return _flip(_take(rows, plan.index), plan)
    as_bytes = rows if rows.dtype == torch.uint8 else _exact_bytes(rows, key)
    out = _merge_halves(_flip(_take(_split_halves(as_bytes), plan.index), plan))
    return out if rows.dtype == torch.uint8 else _levels_to_float(out, rows.dtype)


def _apply_per_image(x: torch.Tensor, key: PerImagePE) -> torch.Tensor:
    """pe-per-image: one fresh gather and flip per image, drawn for the whole batch at once."""
    rows = x.reshape(-1, x.shape[-3:].numel())
    index, mask = key.fresh_plans(rows.shape[0])
    out = torch.gather(rows, 1, index.to(rows.device))
    mask = mask.to(rows.device)
    if out.dtype == torch.uint8:
        return out.bitwise_xor_(mask.to(torch.uint8) * 255).view(x.shape)
    return torch.where(mask, 1 - out, out).view(x.shape)


def _apply_tensor(x: torch.Tensor, key: SchemeKey, decrypt: bool) -> torch.Tensor:
    """``flip(x[..., index], mask)`` over flattened images: the core of the cipher."""
    _check_tensor(x, key)
    if key.per_image:
        return _apply_per_image(x, key)  # type: ignore[arg-type]
    plan = _plan(key, decrypt, x.device, "CHW")
    rows = x.reshape(-1, x.shape[-3:].numel())
    return _apply_units(rows, key, plan).view(x.shape)


def encrypt_hwc_to_chw(a: np.ndarray, key: SchemeKey, decrypt: bool = False) -> torch.Tensor:
    """Encrypt (or decrypt) one uint8 (H, W, C) array straight into a (C, H, W) tensor.

    The layout change ``ToTensor`` would make is folded into the encryption's single gather, so
    a transform pipeline pays almost nothing for encryption (see ``transforms.EncryptToTensor``).
    """
    c, (h, w) = key.channels, key.image_size
    accepted = [(h, w, c)] + ([(h, w)] if c == 1 else [])
    if a.dtype != np.uint8 or a.shape not in accepted:
        raise CipherInputError(
            f"expected a uint8 (H, W, C) = {(h, w, c)} image, got {a.dtype} {a.shape}"
        )
    _refuse_per_image_decryption(key, decrypt)
    if key.per_image:  # no plan to fuse the layout change into
        chw = torch.from_numpy(np.ascontiguousarray(a.reshape(h, w, c).transpose(2, 0, 1)))
        return _apply_tensor(chw, key, decrypt)
    if key.UNIT_BITS == 8 and a.flags.writeable and a.flags.c_contiguous:
        return hwc_encryptor(key, decrypt)(a)
    plan = _plan(key, decrypt, torch.device("cpu"), "HWC")
    if key.UNIT_BITS == 8:  # torch cannot wrap a read-only array without a warning; numpy can
        out = torch.from_numpy(np.take(a.reshape(-1), plan.index.numpy()))
        return _flip(out, plan).view(c, h, w)
    row = torch.from_numpy(a.reshape(1, -1).copy())
    return _apply_units(row, key, plan).view(c, h, w)


def hwc_encryptor(key: SchemeKey, decrypt: bool = False) -> Callable[[np.ndarray], torch.Tensor]:
    """:func:`encrypt_hwc_to_chw` for one key and direction, with the plan looked up once: a
    function of a writable, C-contiguous uint8 array of the key's (H, W, C) (or (H, W)) shape,
    which it does not check again (``EncryptToTensor`` knows the shape from the PIL image).

    In a loader worker the other transforms evict everything from the caches between two
    images, so every Python step and every byte of the plan costs: the gather reads a 4-byte
    index (0.6 MB at 224x224x3, not 1.2 MB of int64) through torch's ``index_select``, which
    takes it as it is, and is then cheaper than the transposing copy ``ToTensor`` makes
    instead (benchmarks/bench_cipher.py). Kept with the key (:meth:`SchemeKey.derived`).
    """

    _refuse_per_image_decryption(key, decrypt)
    if key.per_image or key.UNIT_BITS != 8:  # no byte plan to prebuild: the generic path
        return lambda a: encrypt_hwc_to_chw(np.ascontiguousarray(a), key, decrypt)
    # looked up before key.derived builds the runner: derived() holds the key's lock while it
    # builds, and the plan is another derived value
    plan = _plan(key, decrypt, torch.device("cpu"), "HWC")
    shape = (key.channels, *key.image_size)

    def build() -> Callable[[np.ndarray], torch.Tensor]:
        index32, xor = plan.index.int(), plan.xor_units

        def run(a: np.ndarray) -> torch.Tensor:
            out = torch.from_numpy(a).view(-1).index_select(0, index32)
            return out.bitwise_xor_(xor).view(shape)

        return run

    return key.derived(("hwc-encryptor", decrypt), build)


def _refuse_per_image_decryption(key: SchemeKey, decrypt: bool) -> None:
    if decrypt and key.per_image:
        raise CipherInputError(
            f"{key.scheme} images cannot be decrypted, by design: each image was encrypted with "
            "a fresh key that was never stored"
        )


def _numpy_layout(a: np.ndarray, key: SchemeKey, layout: Layout) -> str:
    c, (h, w) = key.channels, key.image_size
    if a.ndim == 2 and c == 1 and a.shape == (h, w):
        return "HW"
    if layout != "auto":
        return layout
    hwc, chw = a.shape[-3:] == (h, w, c), a.shape[-3:] == (c, h, w)
    if hwc and chw:
        raise CipherInputError(
            f"array shape {a.shape} fits both HWC and CHW for this key; pass layout='HWC' or 'CHW'"
        )
    if not (hwc or chw) or a.ndim not in (3, 4):
        raise CipherInputError(
            f"expected a uint8 array (H, W, C) = {(h, w, c)} or (C, H, W) = {(c, h, w)}, "
            f"optionally with a leading batch axis, got shape {a.shape}"
        )
    return "HWC" if hwc else "CHW"


def _apply_numpy(a: np.ndarray, key: SchemeKey, decrypt: bool, layout: Layout) -> np.ndarray:
    if a.dtype != np.uint8:
        raise CipherInputError(f"numpy images must be uint8, got {a.dtype}")
    found = _numpy_layout(a, key, layout)
    a = np.ascontiguousarray(a)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if found == "HW":
        t = t.unsqueeze(0)
    elif found == "HWC":
        t = t.movedim(-1, -3)
    out = _apply_tensor(t.contiguous(), key, decrypt)
    if found == "HW":
        out = out.squeeze(0)
    elif found == "HWC":
        out = out.movedim(-3, -1)
    return out.contiguous().numpy()


def _apply_pil(img: Image.Image, key: SchemeKey, decrypt: bool) -> Image.Image:
    mode = IMAGE_MODES.get(key.channels)
    if img.mode != mode:
        raise CipherInputError(
            f"PIL image mode {img.mode!r} does not match the key's {key.channels} channel(s); "
            f"convert it explicitly first, e.g. image.convert({mode!r}) (no silent conversion: "
            "dropping alpha or a palette changes the data)"
        )
    if img.size != (key.image_size[1], key.image_size[0]):
        raise CipherInputError(
            f"PIL image is {img.size[0]}x{img.size[1]} (WxH) but the key is for "
            f"{key.image_size[1]}x{key.image_size[0]}; resize/crop it first"
        )
    return Image.fromarray(_apply_numpy(np.array(img), key, decrypt, "HWC"))


def _apply(x, key: SchemeKey, decrypt: bool, layout: Layout):
    _refuse_per_image_decryption(key, decrypt)
    if isinstance(x, torch.Tensor):
        return _apply_tensor(x, key, decrypt)
    if isinstance(x, np.ndarray):
        return _apply_numpy(x, key, decrypt, layout)
    if isinstance(x, Image.Image):
        return _apply_pil(x, key, decrypt)
    raise CipherInputError(
        f"cannot encrypt a {type(x).__name__}: pass a torch.Tensor, a numpy uint8 array or a "
        "PIL image"
    )


def encrypt(x: ImageLike, key: SchemeKey, *, layout: Layout = "auto") -> ImageLike:
    """Encrypt an image or a batch with ``key`` (paper Sec. III-A).

    Args:
        x: a torch tensor ``(C, H, W)`` / ``(B, C, H, W)`` (uint8, or floating in [0, 1]; dtype
            and device are kept), a numpy uint8 array, or a PIL image whose mode matches the
            key's channels (``"L"`` for 1, ``"RGB"`` for 3; other modes are refused, convert
            explicitly).
        key: the secret key; ``(H, W)`` and ``C`` must match the image.
        layout: for numpy arrays only. ``"HWC"`` (PIL / OpenCV style, optionally batched
            ``(B, H, W, C)``) or ``"CHW"`` (what timm's ``ToNumpy`` hands the prefetcher loader,
            optionally ``(B, C, H, W)``). ``"auto"`` picks the one whose shape matches the key's
            geometry and refuses when both match. A 2-D ``(H, W)`` array is a 1-channel image.

    Returns:
        The encrypted image, of the same type, shape, dtype (and device) as ``x``.

    Example:
        >>> from timm_ppconvmixer import BlockKey
        >>> key = BlockKey.generate(32, 4, seed=0)
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> torch.equal(decrypt(encrypt(x, key), key), x)
        True
    """
    return _apply(x, key, False, layout)


def decrypt(x: ImageLike, key: SchemeKey, *, layout: Layout = "auto") -> ImageLike:
    """Invert :func:`encrypt` (same inputs and rules). Exact for uint8."""
    return _apply(x, key, True, layout)
