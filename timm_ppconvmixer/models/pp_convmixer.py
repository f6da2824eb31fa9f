"""PPConvMixer: timm's ConvMixer with the paper's adaptive permutation matrix P (paper
Sec. III-B, Fig. 1); the registered models and cfgs are in :mod:`.models`.

P (:class:`~timm_ppconvmixer.models.permutation.AdaptivePermutation`) is appended to ``stem`` (after
patch embedding conv, activation and BatchNorm), so every method inherited from timm's
``ConvMixer`` (``forward_features``, ``forward_intermediates``, ``prune_intermediate_layers``,
grad checkpointing, ``group_matcher``, which puts P with the stem) runs P in its place with no
copied code. With ``permutation=False`` the model is exactly timm's ConvMixer: same modules, same
state dict, same initialisation, Eq. (3) parameters; with P it has Eq. (4) parameters. The one
difference is speed: each block's depthwise convolution is a
:class:`~timm_ppconvmixer.models.depthwise.DepthwiseConv2d` (an ``nn.Conv2d`` sharing its
parameters)
whose CPU gradients are computed as forward depthwise convolutions, several times faster than
oneDNN's backward, and equal to ``nn.Conv2d``'s up to float rounding.
"""

from __future__ import annotations

import torch
from timm.layers import to_2tuple
from timm.models.convmixer import ConvMixer
from torch import nn

from .depthwise import use_depthwise_backward
from .permutation import AdaptivePermutation, HardPermutation

__all__ = ["PPConvMixer"]


class PPConvMixer(ConvMixer):
    """ConvMixer (Trockman and Kolter, ICLR 2022) with an adaptive permutation matrix.

    Args:
        dim, depth, kernel_size, patch_size, in_chans, num_classes, global_pool, drop_rate,
            act_layer: as timm's ``ConvMixer``. ``patch_size`` must equal the key's block size.
        img_size: (H, W) or int; fixes the token grid (H/M, W/M) and so P's size n x n. Inputs of
            another size are refused with a clear error.
        permutation: add P (default). ``False`` gives the paper's "without P" ablation.
        permutation_init: ``"kaiming"`` (default, as the adaptation network of the penalty's
            source [15]), ``"identity"``, or a block order (list of ints or a JSON file of one,
            e.g. a jigsaw estimate from the encrypted training set); see ``AdaptivePermutation``.
        penalty_weight: lambda of Eq. (1); the paper uses 1e-4.
        implicit_penalty: apply lambda * L_U through P's gradient in training (for timm's
            ``train.py``); set ``False`` when the loss adds ``permutation_penalty()`` itself.
        penalty: ``"madono"`` (default: [15]'s L_U, Eq. (1)) or ``"doubly_stochastic"``
            (AutoShuffleNet, zero exactly at permutation matrices).
        permutation_param: ``"dense"`` (default, the paper's) or ``"sinkhorn"`` (doubly
            stochastic P with annealed temperature: ``sinkhorn_tau``, ``sinkhorn_steps``,
            ``sinkhorn_iters``).
        permutation_lr_gain: multiplies P's learning rate (Adam/AdamW) by reparametrisation.
        smoothness_weight: weight of the relaxed jigsaw prior on the tokens (Sinkhorn only).
        permutation_weight_decay: keep P in weight decay (default False: ``no_weight_decay()``
            lists it, and timm's optimizer factory then exempts it).
        All P options are documented in ``docs/permutation.md``.
        key_fingerprint: the public fingerprint of the key whose encrypted domain the weights
            work in (set by conversion and training, saved in ``config.json``); never the key.

    Example:
        >>> import timm, timm_ppconvmixer
        >>> model = timm.create_model("ppconvmixer_512_16", num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        5345306
    """

    __jit_unused_properties__ = [
        "permutation",
        "permutation_index",
        "penalty_weight",
        "_model_args",
    ]  # Python-side helpers, not part of forward

    def __init__(
        self,
        dim: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 7,
        in_chans: int = 3,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        permutation: bool = True,
        permutation_init: str = "kaiming",
        penalty_weight: float = 1e-4,
        implicit_penalty: bool = True,
        penalty: str = "madono",
        permutation_param: str = "dense",
        permutation_lr_gain: float = 1.0,
        sinkhorn_tau: tuple[float, float] = (1.0, 0.05),
        sinkhorn_steps: int = 0,
        sinkhorn_iters: int = 20,
        smoothness_weight: float = 0.0,
        permutation_weight_decay: bool = False,
        key_fingerprint: str | None = None,
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        super().__init__(
            dim,
            depth,
            kernel_size=kernel_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            device=device,
            dtype=dtype,
            **kwargs,
        )
        self.key_fingerprint = key_fingerprint
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        h, w = self.img_size
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"img_size {h}x{w} is not a multiple of patch_size {patch_size}: with block-wise "
                "encryption every patch must be exactly one block"
            )
        self.grid_size = (h // patch_size, w // patch_size)
        use_depthwise_backward(self.blocks)
        if permutation:
            self.stem.append(
                AdaptivePermutation(
                    self.grid_size,
                    init=permutation_init,
                    penalty_weight=penalty_weight,
                    implicit_penalty=implicit_penalty,
                    penalty=penalty,
                    param=permutation_param,
                    lr_gain=permutation_lr_gain,
                    sinkhorn_tau=sinkhorn_tau,
                    sinkhorn_steps=sinkhorn_steps,
                    sinkhorn_iters=sinkhorn_iters,
                    smoothness_weight=smoothness_weight,
                    weight_decay=permutation_weight_decay,
                    image_size=self.img_size,
                    patch_size=patch_size,
                    device=device,
                    dtype=dtype,
                )
            )

    @property
    def _model_args(self) -> dict:
        """The keyword arguments timm's ``create_model`` recorded (``config.json``'s
        ``model_args`` on export), less ``key``: a key-bound tag's secret is never kept."""
        return self.__dict__.get("_recorded_model_args", {})

    @_model_args.setter
    def _model_args(self, args: dict) -> None:
        self.__dict__["_recorded_model_args"] = {k: v for k, v in args.items() if k != "key"}

    @property
    def permutation_index(self) -> int | None:
        """Index of the token permutation module in ``stem``, or ``None``. Found by type, so
        BatchNorm replacements (``timm.layers.freeze_batch_norm_2d``, SyncBatchNorm for
        ``--sync-bn``) are never mistaken for P."""
        for i, module in enumerate(self.stem):
            if isinstance(module, (AdaptivePermutation, HardPermutation)):
                return i
        return None

    @property
    def permutation(self) -> nn.Module | None:
        """The token permutation module (adaptive P, or a hardened one), or ``None``."""
        index = self.permutation_index
        return None if index is None else self.stem[index]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory exempts from weight decay: P's, unless
        ``permutation_weight_decay=True``. Weight decay shrinks P towards 0, which every
        permutation matrix is far from (and the ``"madono"`` penalty is zero at 0)."""
        perm = self.permutation
        if isinstance(perm, AdaptivePermutation) and not perm.weight_decay:
            return {f"stem.{self.permutation_index}.weight"}
        return set()

    @property
    def penalty_weight(self) -> float:
        """lambda of Eq. (1) for this model's P (0.0 without a trainable P)."""
        perm = self.permutation
        return perm.penalty_weight if isinstance(perm, AdaptivePermutation) else 0.0

    def permutation_penalty(self):
        """The chosen penalty (``penalty=``; default L_U of Eq. (1)) of the effective P,
        unweighted.

        Zero for a model without a trainable P. Add ``penalty_weight * permutation_penalty()``
        to the loss only when ``implicit_penalty`` is off, or the penalty counts twice.
        """
        perm = self.permutation
        if isinstance(perm, AdaptivePermutation):
            return perm.penalty_value()
        return self.head.weight.new_zeros(()) if hasattr(self.head, "weight") else 0.0

    def set_implicit_penalty(self, enable: bool) -> None:
        """Turn the gradient-side penalty on or off (off when the loss adds it explicitly)."""
        perm = self.permutation
        if isinstance(perm, AdaptivePermutation):
            perm.implicit_penalty = bool(enable)
