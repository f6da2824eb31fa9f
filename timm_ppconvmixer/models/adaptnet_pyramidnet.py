"""An adaptation network in front of a ShakeDrop PyramidNet, one registered model per Table I
row with an adaptation network (the paper's Eq. (2): ``N_ELE = N_AdaptNet + N_classifier``).

``adaptnet_ele_shakedrop_pyramidnet110_a270`` is Table I's "AdaptNet + ShakeDrop" of the EtC
and ELE rows (Madono et al., the paper's [15]): 823,296 adaptation parameters plus a
PyramidNet-110/270 whose stem takes the 16-channel map, 29,310,661 in all at 32x32x3 with
10 classes (Table I: 29.31 M). The ``adaptnet_le_*`` models put Tanaka's LE adaptation network
in front instead; the ``*20_a48*`` models are small members for CPU-scale runs (``_fmnist``:
Fashion-MNIST, 28x28, one channel). Modules: :mod:`.adaptnet` and :mod:`.pyramidnet`.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .adaptnet import AdaptNet, LEAdaptNet, adaptnet_num_params
from .permutation import AdaptivePermutation
from .pyramidnet import (
    FMNIST_MEAN,
    FMNIST_STD,
    ShakePyramidNet,
    pyramidnet_cfg,
    pyramidnet_num_params,
)

__all__ = ["ADAPTNETS", "AdaptNetPyramidNet", "adaptnet_pyramidnet_num_params"]

ADAPTNETS = ("ele", "le")


def adaptnet_pyramidnet_num_params(
    img_size: int | tuple[int, int],
    block_size: int,
    depth: int,
    alpha: int,
    adaptnet: str = "ele",
    num_classes: int = 10,
    in_chans: int = 3,
    map_chans: int = 16,
) -> int:
    """Eq. (2): the adaptation network's parameters plus the PyramidNet's on a
    ``map_chans``-channel input."""
    adapt = adaptnet_num_params(img_size, block_size, in_chans, map_chans, shared=adaptnet == "le")
    return adapt + pyramidnet_num_params(depth, alpha, num_classes, in_chans=map_chans)


class AdaptNetPyramidNet(ShakePyramidNet):
    """:class:`~timm_ppconvmixer.models.adaptnet.AdaptNet` (``adaptnet="ele"``) or
    :class:`~timm_ppconvmixer.models.adaptnet.LEAdaptNet` (``"le"``) as ``adapt``, then a
    :class:`~timm_ppconvmixer.models.pyramidnet.ShakePyramidNet` on its map.

    Args:
        img_size, block_size: the encrypted images' size and block size (fix the N positions).
        adaptnet: ``"ele"`` or ``"le"``.
        map_chans, negative_slope, spectral_norm, tv_weight, tv_channels: the adaptation
            network's options (``negative_slope`` and ``tv_weight`` default to each network's
            own: 0.2 and 0.1 for ELE, 0.1 and 0 for LE).
        permutation_init, penalty_weight, implicit_penalty, penalty, permutation_weight_decay:
            U's options (ELE only), named as P's in ``PPConvMixer``.
        depth, alpha, in_chans, num_classes, global_pool, drop_rate, p_drop_last, base_chs: as
            ``ShakePyramidNet`` (``in_chans`` is the images'; the PyramidNet gets ``map_chans``).
        per_position_norm: LE only, :class:`LEAdaptNet`'s option (default: each block with its
            own batch statistics, as [15]'s code).
        key_fingerprint: the public fingerprint of the key the weights were trained under
            (recorded by training and saved in ``config.json``); never the key.

    Example:
        >>> import timm, timm_ppconvmixer
        >>> model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet110_a270")
        >>> sum(p.numel() for p in model.parameters())
        29310661
    """

    __jit_unused_properties__ = ["permutation", "penalty_weight"]

    def __init__(
        self,
        img_size: int | tuple[int, int] = 32,
        block_size: int = 4,
        adaptnet: str = "ele",
        depth: int = 110,
        alpha: int = 270,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        p_drop_last: float = 0.5,
        base_chs: int = 16,
        map_chans: int = 16,
        negative_slope: float | None = None,
        spectral_norm: bool = True,
        permutation_init: str = "kaiming",
        penalty_weight: float = 1e-3,
        implicit_penalty: bool = True,
        penalty: str = "madono",
        permutation_weight_decay: bool = False,
        tv_weight: float | None = None,
        tv_channels: int = 3,
        per_position_norm: bool = True,
        key_fingerprint: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        if adaptnet not in ADAPTNETS:
            raise ValueError(f"adaptnet must be one of {ADAPTNETS}, got {adaptnet!r}")
        super().__init__(
            depth,
            alpha,
            in_chans=map_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            p_drop_last=p_drop_last,
            base_chs=base_chs,
            device=device,
            dtype=dtype,
        )
        self.in_chans = in_chans
        # the public fingerprint of the key whose images the weights classify (saved in
        # config.json by timm_ppconvmixer.hub, as PPConvMixer's); never the key
        self.key_fingerprint = key_fingerprint
        common = dict(
            img_size=img_size,
            block_size=block_size,
            in_chans=in_chans,
            map_chans=map_chans,
            tv_channels=tv_channels,
            device=device,
            dtype=dtype,
        )
        if negative_slope is not None:
            common["negative_slope"] = negative_slope
        if tv_weight is not None:
            common["tv_weight"] = tv_weight
        if adaptnet == "ele":
            self.adapt = AdaptNet(
                spectral_norm=spectral_norm,
                permutation_init=permutation_init,
                penalty_weight=penalty_weight,
                implicit_penalty=implicit_penalty,
                penalty=penalty,
                permutation_weight_decay=permutation_weight_decay,
                **common,
            )
        else:
            self.adapt = LEAdaptNet(per_position_norm=per_position_norm, **common)
        # first child: timm's FeatureListNet (features_only) runs the children in order
        adapt, rest = self.adapt, {k: v for k, v in self._modules.items() if k != "adapt"}
        self._modules.clear()
        self._modules.update(adapt=adapt, **rest)
        self.img_size = self.adapt.img_size

    @property
    def permutation(self) -> AdaptivePermutation | None:
        """U, the adaptation network's N x N mixing matrix (ELE), or ``None`` (LE)."""
        mixing = getattr(self.adapt, "mixing", None)
        return mixing if isinstance(mixing, AdaptivePermutation) else None

    @property
    def penalty_weight(self) -> float:
        """lambda of L_U for U (0.001 in [15]'s code; 0.0 without U)."""
        u = self.permutation
        return u.penalty_weight if u is not None else 0.0

    def permutation_penalty(self) -> torch.Tensor:
        """L_U of U (``penalty=``; the one implementation P uses), unweighted; 0 without U. Add
        ``penalty_weight * permutation_penalty()`` to the loss only with the implicit penalty
        off (``set_implicit_penalty(False)``), or it counts twice."""
        u = self.permutation
        return u.penalty_value() if u is not None else self.head.fc.weight.new_zeros(())

    def set_implicit_penalty(self, enable: bool) -> None:
        """Turn U's gradient-side L_U on or off (the TV prior stays implicit)."""
        u = self.permutation
        if u is not None:
            u.implicit_penalty = bool(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """U's name, unless ``permutation_weight_decay=True`` (decay pulls U towards 0)."""
        u = self.permutation
        return {"adapt.mixing.weight"} if u is not None and not u.weight_decay else set()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.adapt(x))


def _create(variant: str, pretrained: bool = False, **kwargs) -> AdaptNetPyramidNet:
    return build_model_with_cfg(
        AdaptNetPyramidNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    # the PyramidNet cfg, with the AdaptNet in front: its first conv, and a fixed input size
    # (one conv and BatchNorm per block position)
    return pyramidnet_cfg(fixed_input_size=True, first_conv="adapt.proj", **kwargs)


_FMNIST = dict(input_size=(1, 28, 28), mean=FMNIST_MEAN, std=FMNIST_STD)

default_cfgs = generate_default_cfgs(
    {
        "adaptnet_ele_shakedrop_pyramidnet110_a270": _cfg(),
        "adaptnet_le_shakedrop_pyramidnet110_a270": _cfg(),
        "adaptnet_ele_shakedrop_pyramidnet20_a48": _cfg(),
        "adaptnet_le_shakedrop_pyramidnet20_a48": _cfg(),
        "adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist": _cfg(**_FMNIST),
        "adaptnet_le_shakedrop_pyramidnet20_a48_fmnist": _cfg(**_FMNIST),
    }
)


def _args(defaults: dict, kwargs: dict) -> dict:
    return dict(defaults, **kwargs)  # the name gives the defaults; kwargs may override them


@register_model
def adaptnet_ele_shakedrop_pyramidnet110_a270(pretrained=False, **kwargs) -> AdaptNetPyramidNet:
    """Table I's ELE/EtC "AdaptNet + ShakeDrop": ELE-AdaptNet (block 4) and PyramidNet-110/270;
    CIFAR-10 32x32."""
    args = _args(dict(adaptnet="ele", depth=110, alpha=270, block_size=4), kwargs)
    return _create("adaptnet_ele_shakedrop_pyramidnet110_a270", pretrained, **args)


@register_model
def adaptnet_le_shakedrop_pyramidnet110_a270(pretrained=False, **kwargs) -> AdaptNetPyramidNet:
    """LE-AdaptNet (Tanaka; block 4) and PyramidNet-110/270; 32x32."""
    args = _args(dict(adaptnet="le", depth=110, alpha=270, block_size=4), kwargs)
    return _create("adaptnet_le_shakedrop_pyramidnet110_a270", pretrained, **args)


@register_model
def adaptnet_ele_shakedrop_pyramidnet20_a48(pretrained=False, **kwargs) -> AdaptNetPyramidNet:
    """ELE-AdaptNet (block 4) and PyramidNet-20/48, for CPU-scale runs; 32x32."""
    args = _args(dict(adaptnet="ele", depth=20, alpha=48, block_size=4), kwargs)
    return _create("adaptnet_ele_shakedrop_pyramidnet20_a48", pretrained, **args)


@register_model
def adaptnet_le_shakedrop_pyramidnet20_a48(pretrained=False, **kwargs) -> AdaptNetPyramidNet:
    """LE-AdaptNet (block 4) and PyramidNet-20/48, for CPU-scale runs; 32x32."""
    args = _args(dict(adaptnet="le", depth=20, alpha=48, block_size=4), kwargs)
    return _create("adaptnet_le_shakedrop_pyramidnet20_a48", pretrained, **args)


@register_model
def adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist(
    pretrained=False, **kwargs
) -> AdaptNetPyramidNet:
    """ELE-AdaptNet (block 4, 7x7 positions) and PyramidNet-20/48 for Fashion-MNIST 28x28x1."""
    args = _args(dict(adaptnet="ele", depth=20, alpha=48, block_size=4), kwargs)
    return _create("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist", pretrained, **args)


@register_model
def adaptnet_le_shakedrop_pyramidnet20_a48_fmnist(pretrained=False, **kwargs) -> AdaptNetPyramidNet:
    """LE-AdaptNet (block 4) and PyramidNet-20/48 for Fashion-MNIST 28x28x1."""
    args = _args(dict(adaptnet="le", depth=20, alpha=48, block_size=4), kwargs)
    return _create("adaptnet_le_shakedrop_pyramidnet20_a48_fmnist", pretrained, **args)
