"""The networks: PPConvMixer with its adaptive permutation matrix P (paper Sec. III-B), the
AdaptNet of Madono et al. and the ShakeDrop PyramidNet it sits in front of (Table I), and their
timm registrations. Importing this package registers the architectures trained from scratch
(``ppconvmixer_512_16``, ``ppconvmixer_256_8``, ``shakedrop_pyramidnet*``, ``adaptnet_*``).

The networks know no key file, no Hub, no attack and no command line: models bound to a key
(conversion, hardening, shipped weights) live in :mod:`timm_ppconvmixer.keyed`.

* :mod:`.pp_convmixer` -- the PPConvMixer class (timm's ConvMixer with P after the stem);
* :mod:`.permutation`, :mod:`.permutation_penalties`, :mod:`.permutation_hard` -- P, its
  penalty L_U and the hard permutation it can become;
* :mod:`.depthwise` -- the depthwise convolution with forward-convolution gradients on CPU;
* :mod:`.adaptnet`, :mod:`.pyramidnet`, :mod:`.adaptnet_pyramidnet` -- Table I's other rows;
* :mod:`.registry` -- the ``ppconvmixer_*`` registrations, cfgs and Eq. (3)/(4) counts.
"""

from .adaptnet import AdaptNet, LEAdaptNet, adaptnet_num_params
from .adaptnet_pyramidnet import AdaptNetPyramidNet, adaptnet_pyramidnet_num_params
from .permutation import AdaptivePermutation, HardPermutation, permutation_penalty
from .pyramidnet import ShakeDrop, ShakePyramidNet, pyramidnet_num_params
from .registry import KeyBoundError, PPConvMixer, convmixer_num_params, ppconvmixer_num_params

__all__ = [
    "AdaptNet",
    "AdaptNetPyramidNet",
    "AdaptivePermutation",
    "HardPermutation",
    "KeyBoundError",
    "LEAdaptNet",
    "PPConvMixer",
    "ShakeDrop",
    "ShakePyramidNet",
    "adaptnet_num_params",
    "adaptnet_pyramidnet_num_params",
    "convmixer_num_params",
    "permutation_penalty",
    "ppconvmixer_num_params",
    "pyramidnet_num_params",
]
