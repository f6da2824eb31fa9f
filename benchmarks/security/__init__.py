"""The supporting code of ``benchmarks/security_eval.py``, the one security runner.

The runner measures every scheme's ciphertext-only attack (``timm_ppconvmixer.attacks``) the
same way and writes the tables of docs/security.md, docs/security_le.md, docs/security_ele.md,
docs/security_etc.md, docs/security_pe.md and docs/security_few_images.md. Its parts, imported
by the script (none of them is a script itself):

* :mod:`.data`: the images (Fashion-MNIST, upscaled Fashion-MNIST, photograph crops), the
  settings and the attacker's priors;
* :mod:`.runs`: the regimes, the keys/samples loop, the scoring of one run and the runs files
  that let a stopped evaluation resume run by run;
* :mod:`.extras`: the measurements beside the ciphertext-only runs (known plaintext, sample
  variation, the shipped demo model's leak);
* :mod:`.tables`: aggregation over keys and every markdown table;
* :mod:`.provenance`: what every results JSON records about how it was made, and the atomic
  writes.
"""
