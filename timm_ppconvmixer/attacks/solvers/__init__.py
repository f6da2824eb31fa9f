"""The pieces the ciphertext-only attacks are built from, none tied to one scheme's key format:
block views and symmetries (:mod:`.blocks`), correlation attacks on a flip mask and a pixel
shuffle (:mod:`.flip_mask`, :mod:`.pixel_shuffle`, :mod:`.qap`, :mod:`.halves` for 4-bit
halves), jigsaw-puzzle solvers over the block grid (:mod:`.jigsaw`, :mod:`.frame`; with unknown
orientations :mod:`.jigsaw_oriented`, :mod:`.oriented_edges`, :mod:`.piece_group`), per-pixel
group synchronisation and a minimum cut (:mod:`.pe_sync`, :mod:`.pe_cut`), and the image
priors that pick one key among those the ciphertext cannot tell apart (:mod:`.priors`).
"""
