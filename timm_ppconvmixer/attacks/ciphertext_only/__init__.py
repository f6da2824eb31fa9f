"""One ciphertext-only attack per scheme of :mod:`timm_ppconvmixer.schemes`, as a provider that
holds N images encrypted with one key would run it: :mod:`.blockwise` (the paper's scheme),
:mod:`.le`, :mod:`.ele`, :mod:`.etc` and :mod:`.pe` (both PE forms). Each assembles the generic
:mod:`..solvers` for its scheme's steps; :mod:`timm_ppconvmixer.attacks.registry` maps a scheme
to its attack and scorer.
"""
