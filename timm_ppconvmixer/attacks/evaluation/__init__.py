"""Judging an attack, for the owner who holds the true key: key and image scores
(:mod:`.scoring`), a plain-domain classifier that tells whether reconstructions are
recognisable (:mod:`.classifier`), loading encrypted folders and datasets as an attacker holds
them (:mod:`.inputs`), and the whole attack on a dataset as a report (:mod:`.report`).
"""
