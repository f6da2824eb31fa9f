"""Judging an attack, for the owner who holds the true key: key and image scores
(:mod:`.scoring`), a plain-domain classifier that tells whether reconstructions are
recognisable (:mod:`.classifier`), and loading encrypted folders and datasets as an attacker
holds them (:mod:`.inputs`). :mod:`timm_ppconvmixer.attacks.report` runs the whole attack on a
dataset with them.
"""
