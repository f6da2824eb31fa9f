"""Where the image border lies: priors for the jigsaw's cyclic-shift ambiguity (:mod:`.jigsaw`).

When the border of every image is background, the block order K1 (docs/design.md section 2
"Encryption", step 2) is only determined up to cyclic shifts of the layout by the edge
compatibilities; these helpers detect that and resolve it by a stated prior (content centred),
and find blank pieces (identical in every image, hence interchangeable).

Example:
    >>> import numpy as np
    >>> pieces = np.zeros((2, 4, 1, 2, 2), dtype=np.uint8)
    >>> blank_pieces(pieces).tolist()
    [True, True, True, True]
"""

from __future__ import annotations

import numpy as np

__all__ = ["blank_pieces", "centre_blank_border", "frame_prior"]


def frame_prior(
    lay: np.ndarray, pieces: np.ndarray, lr: np.ndarray, tb: np.ndarray, dominance: float = 2.0
) -> tuple[np.ndarray, list[str]]:
    """Choose where the image border lies among the cyclic shifts of the layout.

    On the torus (the layout with its opposite sides glued) every column boundary is a
    candidate for the image's left/right border. In photographs the true border is by far the
    least compatible seam, and the solver puts it there. Where the image border is (nearly)
    background, the seams between near-blank columns all cost almost nothing, and a shifted
    layout can even cost less than the true one: no edge measure can decide. Then (no seam at
    least ``dominance`` times costlier than every other one) the prior decides: the content
    (pixels away from the most common value) is centred in the frame, as in object-centred data
    such as Fashion-MNIST. The same for rows.
    """
    values, counts = np.unique(pieces[: min(len(pieces), 256)], return_counts=True)
    background = float(values[np.argmax(counts)])
    activity = ((pieces.astype(np.float32) - background) ** 2).mean(axis=(0, 2, 3, 4))
    notes = []
    for axis, d in ((1, lr), (0, tb)):
        lines = lay if axis == 1 else lay.T  # lines[:, k] is column k (or row k)
        size = lines.shape[1]
        if size < 3:
            continue
        seam = np.array([d[lines[:, k - 1], lines[:, k]].mean() for k in range(size)])
        order = np.argsort(-seam)
        if seam[order[0]] >= dominance * seam[order[1]]:
            shift = -int(order[0])
        else:
            weight = activity[lines].sum(0)  # content per column (or row)
            centred = np.arange(size) - (size - 1) / 2

            def off_centre(k: int, weight: np.ndarray = weight, c: np.ndarray = centred) -> float:
                # second moment about the frame centre: low when the content sits in the middle
                w = np.roll(weight, k)
                return float(w @ c**2 / max(w.sum(), 1e-12))

            shift = min(range(size), key=lambda k: (round(off_centre(k), 6), k))
            notes.append(
                f"no {'column' if axis == 1 else 'row'} seam stands out as the image border "
                f"(costliest {seam[order[0]]:.3g} vs next {seam[order[1]]:.3g}): cyclic-shift "
                "ambiguity, resolved by the centring prior (content centred in the frame)"
            )
        lines = np.roll(lines, shift, axis=1)
        lay = lines if axis == 1 else lines.T
    return lay, notes


def blank_pieces(pieces: np.ndarray) -> np.ndarray:
    """Pieces whose content is one constant value, the same in every image."""
    flat = pieces.reshape(pieces.shape[0], pieces.shape[1], -1)
    first = flat[:1, :, :1]
    return (flat == first).all(axis=(0, 2))


def centre_blank_border(lay: np.ndarray, blank: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Split border rows/columns made only of blank pieces evenly between opposite sides."""
    notes = []
    for axis in (0, 1):
        lines = lay if axis == 0 else lay.T
        is_blank = blank[lines].all(axis=1)
        lead = int(np.argmin(is_blank)) if not is_blank.all() else len(is_blank)
        trail = int(np.argmin(is_blank[::-1])) if not is_blank.all() else 0
        if lead + trail == 0 or lead == len(is_blank):
            continue
        want = (lead + trail) // 2
        shift = want - lead
        if shift:
            lines = np.roll(lines, shift, axis=0)
            lay = lines if axis == 0 else lines.T
        side = "rows" if axis == 0 else "columns"
        notes.append(
            f"{lead + trail} blank border {side}: the image can move by up to "
            f"{lead + trail} blocks along them without changing any edge (cyclic-shift "
            "ambiguity); split evenly (prior: content centred)"
        )
    return lay, notes
