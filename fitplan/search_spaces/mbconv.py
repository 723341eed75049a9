"""Mobile inverted-bottleneck (MBConv) building blocks, elastic and static, OFA-style.

Used by the ``ofa_mbv3`` space. The elastic ("dynamic") versions hold the weights of the largest block and
run a smaller one by slicing, exactly as Once-for-All (Cai et al., ICLR 2020) does:

* :class:`ElasticDepthwiseConv2d` - depthwise conv with elastic kernel size. A smaller kernel is not a
  plain centre crop: OFA's *kernel transform* (``KERNEL_TRANSFORM_MODE=1``) maps the centre crop through a
  learnable ``k^2 x k^2`` matrix per step (7->5: 25x25, 5->3: 9x9), shared by all channels, so that the
  small kernel can differ from the centre of the large one while still sharing its weights.
* :class:`DynamicSE` - squeeze-and-excitation whose reduced width follows the (elastic) input width,
  ``make_divisible(C // 4, 8)``, with ReLU and hard-sigmoid gate.
* :class:`DynamicMBConv` - [1x1 expand + BN + act] -> depthwise kxk + BN + act [+ SE] -> 1x1 project + BN
  (+ identity residual when stride 1 and in == out), with elastic expanded width and kernel.

Every dynamic module has ``to_static`` returning plain ``torch.nn`` layers holding copies of the active
slice (the transformed kernel baked in), so an extracted subnet computes exactly what the supernet did.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from fitplan.errors import ConfigError
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, make_divisible, sub_kernel

#: Activation names used by MobileNetV3 -> module factory.
ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish}

#: SE reduction ratio (reduced width = make_divisible(C // SE_REDUCTION, 8)), as in OFA and MobileNetV3.
SE_REDUCTION = 4


def make_act(name: str) -> nn.Module:
    """A fresh activation module by name (``relu`` or ``hswish``)."""
    if name not in ACTIVATIONS:
        raise ConfigError("act", f"unknown activation {name!r}", list(ACTIVATIONS))
    return ACTIVATIONS[name]()


def se_channels(channels: int) -> int:
    """Reduced width of the SE module on ``channels`` channels (OFA: ``make_divisible(C // 4, 8)``)."""
    return make_divisible(channels // SE_REDUCTION, 8)


# --------------------------------------------------------------------------------------------- elastic ops
class ElasticDepthwiseConv2d(DynamicConv2d):
    """Depthwise conv with elastic channels (read from the input) and elastic kernel size.

    Kernel sizes smaller than the maximum are obtained with OFA's kernel transform: starting from the full
    kernel, for every step ``K -> K'`` of the sorted kernel set, take the centre ``K' x K'`` crop, flatten it
    to ``K'^2`` values per channel and multiply by the learnable matrix ``matrix_{K}to{K'}`` (initialised to
    the identity, so an untrained transform equals the plain centre crop).

    Args:
        channels: largest channel count.
        kernel_size: largest kernel size (odd).
        kernel_choices: every kernel size this layer may run; all odd and <= ``kernel_size``.
        stride: fixed stride.
    """

    def __init__(self, channels: int, kernel_size: int, kernel_choices: tuple[int, ...] | list[int],
                 stride: int = 1):
        super().__init__(channels, channels, kernel_size, stride=stride, depthwise=True, bias=False)
        ks = sorted({int(k) for k in kernel_choices if k <= kernel_size} | {kernel_size})
        if any(k % 2 == 0 for k in ks):
            raise ConfigError("kernel_choices", "kernel sizes must be odd", [3, 5, 7])
        self.kernel_set: tuple[int, ...] = tuple(ks)
        for small, large in zip(ks[:-1], ks[1:]):
            self.register_parameter(self.matrix_name(large, small), nn.Parameter(torch.eye(small * small)))

    @staticmethod
    def matrix_name(large: int, small: int) -> str:
        """Attribute name of the transform matrix for the step ``large -> small``."""
        return f"matrix_{large}to{small}"

    def transform_parameters(self) -> list[nn.Parameter]:
        """The kernel-transform matrices (supernet-only: never part of an extracted subnet)."""
        ks = self.kernel_set
        return [getattr(self, self.matrix_name(large, small)) for small, large in zip(ks[:-1], ks[1:])]

    def active_weight(self, in_ch: int) -> torch.Tensor:
        """Depthwise kernel ``[in_ch, 1, k, k]`` for the active kernel size ``k`` (transform applied)."""
        w = self.weight[:in_ch]
        k = self.active_kernel
        if k == self.max_kernel:
            return w.contiguous()
        if k not in self.kernel_set:
            raise ConfigError("ks", f"kernel {k} is not one of this layer's kernels", list(self.kernel_set))
        ks = self.kernel_set
        for i in range(len(ks) - 1, 0, -1):
            src, dst = ks[i], ks[i - 1]
            if src <= k:
                break
            crop = sub_kernel(w, dst).contiguous()
            flat = crop.view(crop.size(0), crop.size(1), -1).view(-1, dst * dst)
            flat = F.linear(flat, getattr(self, self.matrix_name(src, dst)))
            w = flat.view(crop.size(0), crop.size(1), dst, dst)
        return w.contiguous()


class DynamicSE(nn.Module):
    """Squeeze-and-excitation with elastic width: ``x * hsigmoid(W2 relu(W1 mean(x) + b1) + b2)``.

    The reduced width follows the input width (``se_channels(C)``); weights are the leading slices of the
    largest module's, as in OFA's ``DynamicSE``.
    """

    def __init__(self, max_channels: int, max_reduced: int | None = None):
        super().__init__()
        max_reduced = max_reduced or se_channels(max_channels)
        self.reduce = DynamicConv2d(max_channels, max_reduced, 1, bias=True)
        self.expand = DynamicConv2d(max_reduced, max_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        self.reduce.active_out = se_channels(c)
        self.expand.active_out = c
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(self.reduce(y))
        y = F.hardsigmoid(self.expand(y))
        return x * y

    def to_static(self, c: int) -> "SqueezeExcite":
        r = se_channels(c)
        self.reduce.active_out = r
        self.expand.active_out = c
        se = SqueezeExcite(c, r)
        se.reduce = self.reduce.to_static(c)
        se.expand = self.expand.to_static(r)
        return se


class SqueezeExcite(nn.Module):
    """Static SE: global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid -> scale."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(y))))


# --------------------------------------------------------------------------------------------- blocks
class MBConvBlock(nn.Module):
    """Static MBConv block: optional ``inverted_bottleneck`` (1x1 conv, BN, act), ``depth_conv`` (depthwise
    conv, BN, act, optional ``se``), ``point_linear`` (1x1 conv, BN), identity residual when ``residual``."""

    def __init__(self, inverted_bottleneck: nn.Module | None, depth_conv: nn.Module, point_linear: nn.Module,
                 residual: bool):
        super().__init__()
        self.inverted_bottleneck = inverted_bottleneck
        self.depth_conv = depth_conv
        self.point_linear = point_linear
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inverted_bottleneck(x) if self.inverted_bottleneck is not None else x
        y = self.point_linear(self.depth_conv(y))
        return y + x if self.residual else y


class DynamicMBConv(nn.Module):
    """Elastic MBConv block (OFA's ``DynamicMBConvLayer`` inside a ``ResidualBlock``).

    The input and output widths are fixed; the expanded (middle) width and the depthwise kernel are elastic.

    Args:
        in_ch, out_ch: input / output channels.
        max_mid: largest middle width (the expanded width when ``expand`` is True; must equal ``in_ch``
            otherwise).
        max_kernel: largest depthwise kernel.
        kernel_choices: kernel sizes the block may run (kernel transform between them).
        stride: depthwise stride.
        act: ``relu`` or ``hswish``.
        use_se: squeeze-and-excitation after the depthwise conv.
        expand: whether there is a 1x1 expansion conv (False for MobileNetV3's first block).
        max_se: largest SE reduced width (default ``se_channels(max_mid)``).
    """

    def __init__(self, in_ch: int, out_ch: int, max_mid: int, max_kernel: int,
                 kernel_choices: tuple[int, ...] | list[int], stride: int, act: str, use_se: bool,
                 expand: bool = True, max_se: int | None = None):
        super().__init__()
        if not expand and max_mid != in_ch:
            raise ConfigError("max_mid", f"a block without expansion has mid == in ({in_ch}), got {max_mid}")
        self.in_ch, self.out_ch, self.max_mid = in_ch, out_ch, max_mid
        self.stride, self.act_name, self.use_se = stride, act, use_se
        self.residual = stride == 1 and in_ch == out_ch
        if expand:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", DynamicConv2d(in_ch, max_mid, 1)),
                ("bn", DynamicBatchNorm2d(max_mid)),
                ("act", make_act(act)),
            ]))
        else:
            self.inverted_bottleneck = None
        layers: list[tuple[str, nn.Module]] = [
            ("conv", ElasticDepthwiseConv2d(max_mid, max_kernel, kernel_choices, stride)),
            ("bn", DynamicBatchNorm2d(max_mid)),
            ("act", make_act(act)),
        ]
        if use_se:
            layers.append(("se", DynamicSE(max_mid, max_se)))
        self.depth_conv = nn.Sequential(OrderedDict(layers))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", DynamicConv2d(max_mid, out_ch, 1)),
            ("bn", DynamicBatchNorm2d(out_ch)),
        ]))
        self.active_mid = max_mid

    @property
    def max_kernel(self) -> int:
        return self.depth_conv.conv.max_kernel

    @property
    def active_kernel(self) -> int:
        return self.depth_conv.conv.active_kernel

    def set_active(self, kernel: int, mid: int) -> None:
        """Run the depthwise conv with ``kernel`` and ``mid`` expanded channels."""
        if kernel not in self.depth_conv.conv.kernel_set:
            raise ConfigError("ks", f"kernel {kernel} not available in this block",
                              list(self.depth_conv.conv.kernel_set))
        if not 0 < mid <= self.max_mid or (self.inverted_bottleneck is None and mid != self.in_ch):
            raise ConfigError("e", f"middle width {mid} not available (max {self.max_mid})")
        self.active_mid = mid
        self.depth_conv.conv.active_kernel = kernel
        if self.inverted_bottleneck is not None:
            self.inverted_bottleneck.conv.active_out = mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inverted_bottleneck(x) if self.inverted_bottleneck is not None else x
        y = self.point_linear(self.depth_conv(y))
        return y + x if self.residual else y

    def to_static(self) -> MBConvBlock:
        """Plain-layer copy of the active block (kernel transform baked into the depthwise weight)."""
        mid = self.active_mid
        ib = None
        if self.inverted_bottleneck is not None:
            ib = nn.Sequential(OrderedDict([
                ("conv", self.inverted_bottleneck.conv.to_static(self.in_ch)),
                ("bn", self.inverted_bottleneck.bn.to_static(mid)),
                ("act", make_act(self.act_name)),
            ]))
        layers: list[tuple[str, nn.Module]] = [
            ("conv", self.depth_conv.conv.to_static(mid)),
            ("bn", self.depth_conv.bn.to_static(mid)),
            ("act", make_act(self.act_name)),
        ]
        if self.use_se:
            layers.append(("se", self.depth_conv.se.to_static(mid)))
        pl = nn.Sequential(OrderedDict([
            ("conv", self.point_linear.conv.to_static(mid)),
            ("bn", self.point_linear.bn.to_static(self.out_ch)),
        ]))
        return MBConvBlock(ib, nn.Sequential(OrderedDict(layers)), pl, self.residual)


def mbconv_costs(in_ch: int, out_ch: int, mid: int, kernel: int, stride: int, hw_in: int, use_se: bool,
                 expand: bool = True) -> tuple[int, int, int, int]:
    """Analytic ``(macs, params, out_act_elems, hw_out)`` of one MBConv block on a square ``hw_in`` input.

    MACs count conv multiply-accumulates (expand, depthwise, SE 1x1 convs, project); params count conv
    weights, SE biases and BN affine parameters - exactly the parameters of :meth:`DynamicMBConv.to_static`.
    """
    hw_out = (hw_in - 1) // stride + 1
    macs = params = 0
    if expand:
        macs += hw_in * hw_in * in_ch * mid
        params += in_ch * mid + 2 * mid
    macs += hw_out * hw_out * mid * kernel * kernel
    params += mid * kernel * kernel + 2 * mid
    if use_se:
        r = se_channels(mid)
        macs += 2 * mid * r
        params += 2 * mid * r + r + mid
    macs += hw_out * hw_out * mid * out_ch
    params += mid * out_ch + 2 * out_ch
    return macs, params, out_ch * hw_out * hw_out, hw_out


def mbconv_dw_macs(mid: int, kernel: int, stride: int, hw_in: int) -> int:
    """MACs of the depthwise ``kernel x kernel`` conv of one MBConv block (``mid`` channels, square ``hw_in``
    input, ``stride``): the depthwise part of :func:`mbconv_costs`' ``macs`` (``UnitCost.dw_macs``)."""
    hw_out = (hw_in - 1) // stride + 1
    return hw_out * hw_out * mid * kernel * kernel
