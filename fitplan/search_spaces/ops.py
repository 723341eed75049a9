"""Weight-sharing ("dynamic") layers for elastic supernets, OFA-style.

Each layer owns the weights of its largest configuration and runs a smaller one by slicing: the first
``k`` output channels, the first input channels that arrive, the centre of the kernel. ``to_static``
copies the active slice into a plain ``torch.nn`` layer so that an extracted subnet holds real, smaller
tensors and computes exactly what the supernet computed for the same configuration.

Input channels are never configured: every layer reads them from the incoming tensor, so a
configuration only sets output widths, kernel sizes and depths.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sub_kernel(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centre ``kernel_size x kernel_size`` crop of a conv weight ``[out, in, k, k]``."""
    k = weight.shape[-1]
    if kernel_size == k:
        return weight
    start = (k - kernel_size) // 2
    return weight[..., start:start + kernel_size, start:start + kernel_size]


class DynamicConv2d(nn.Module):
    """Conv2d with elastic output channels and kernel size (centre crop).

    Args:
        max_in: largest input channel count.
        max_out: largest output channel count.
        kernel_size: largest kernel size (odd).
        stride, dilation: fixed.
        depthwise: groups == channels (out follows in); otherwise a dense conv.
        bias: whether the conv has a bias.
    """

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1,
                 dilation: int = 1, depthwise: bool = False, bias: bool = False):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.max_kernel, self.stride, self.dilation = kernel_size, stride, dilation
        self.depthwise = depthwise
        in_per_group = 1 if depthwise else max_in
        self.weight = nn.Parameter(torch.empty(max_out, in_per_group, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.active_out = max_out
        self.active_kernel = kernel_size

    def active_weight(self, in_ch: int) -> torch.Tensor:
        """The weight slice used for ``in_ch`` input channels (kernel transforms override this)."""
        if self.depthwise:
            w = self.weight[:in_ch]
        else:
            w = self.weight[:self.active_out, :in_ch]
        return sub_kernel(w, self.active_kernel).contiguous()

    def out_channels(self, in_ch: int) -> int:
        return in_ch if self.depthwise else self.active_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_ch = x.shape[1]
        w = self.active_weight(in_ch)
        out = self.out_channels(in_ch)
        b = self.bias[:out] if self.bias is not None else None
        pad = self.dilation * (self.active_kernel - 1) // 2
        return F.conv2d(x, w, b, self.stride, pad, self.dilation, in_ch if self.depthwise else 1)

    def to_static(self, in_ch: int) -> nn.Conv2d:
        out = self.out_channels(in_ch)
        k = self.active_kernel
        conv = nn.Conv2d(in_ch, out, k, self.stride, self.dilation * (k - 1) // 2, self.dilation,
                         groups=in_ch if self.depthwise else 1, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.active_weight(in_ch))
            if self.bias is not None:
                conv.bias.copy_(self.bias[:out])
        return conv


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the first ``C`` channels of its largest size (C read from the input).

    Subnets share the running statistics of their channels; :func:`fitplan.search_spaces.training`
    recalibrates them per subnet before evaluation (as OFA does).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        else:
            momentum = 0.0
        use_batch = self.training or not self.track_running_stats
        rm = self.running_mean[:c] if self.running_mean is not None else None
        rv = self.running_var[:c] if self.running_var is not None else None
        return F.batch_norm(x, rm, rv, self.weight[:c] if self.affine else None,
                            self.bias[:c] if self.affine else None, use_batch, momentum, self.eps)

    def to_static(self, c: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum, affine=self.affine,
                            track_running_stats=self.track_running_stats)
        with torch.no_grad():
            if self.affine:
                bn.weight.copy_(self.weight[:c])
                bn.bias.copy_(self.bias[:c])
            if self.track_running_stats:
                bn.running_mean.copy_(self.running_mean[:c])
                bn.running_var.copy_(self.running_var[:c])
                bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class DynamicLinear(nn.Module):
    """Linear with elastic output features; input features read from the input's last dimension."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = x.shape[-1]
        b = self.bias[:self.active_out] if self.bias is not None else None
        return F.linear(x, self.weight[:self.active_out, :i], b)

    def to_static(self, in_features: int) -> nn.Linear:
        lin = nn.Linear(in_features, self.active_out, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight[:self.active_out, :in_features])
            if self.bias is not None:
                lin.bias.copy_(self.bias[:self.active_out])
        return lin


class DynamicLayerNorm(nn.LayerNorm):
    """LayerNorm over the first ``D`` features of its largest size (D read from the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        w = self.weight[:d] if self.weight is not None else None
        b = self.bias[:d] if self.bias is not None else None
        return F.layer_norm(x, (d,), w, b, self.eps)

    def to_static(self, d: int) -> nn.LayerNorm:
        ln = nn.LayerNorm(d, eps=self.eps, elementwise_affine=self.weight is not None)
        if self.weight is not None:
            with torch.no_grad():
                ln.weight.copy_(self.weight[:d])
                if self.bias is not None:
                    ln.bias.copy_(self.bias[:d])
        return ln


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (never below 90% of ``v``), as MobileNet does."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
