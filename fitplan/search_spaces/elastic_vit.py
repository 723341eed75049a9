"""``elastic_vit``: a weight-sharing Vision Transformer (AutoFormer / HAT style) with a token budget.

What can be chosen (one flat config):

``embed_dim``
    width of the token embeddings (the first ``embed_dim`` features of every supernet weight).
``depth``
    number of transformer blocks that run (the first ``depth`` of ``max_depth``).
``num_heads`` / ``mlp_ratio``
    per block (``max_depth`` entries; entries of blocks ``>= depth`` are present but ignored). The head
    dimension is fixed (``head_dim``), so the attention width is ``num_heads * head_dim`` and is independent
    of ``embed_dim``, as in AutoFormer; the MLP hidden width is ``round(embed_dim * mlp_ratio)``.
``tokens``
    keep ratio of the patch tokens at each fixed pruning site ``token_layers`` (kind ``"tokens"``). After
    block ``token_layers[j]`` the CLS token and the ``ceil(tokens[j] * n)`` patch tokens with the largest
    CLS attention of that block (averaged over heads) are kept, EViT / ATS style; with
    ``fuse_tokens=True`` the dropped tokens are merged into one extra token, weighted by their attention.
    Sites at or beyond ``depth`` are ignored.

Why this shape: the planner trades accuracy for latency/memory along all of these axes jointly; token
pruning cuts the quadratic attention cost and the linear MLP cost of every later block, which width and
depth alone cannot express. Selection uses ``torch.topk`` + ``torch.gather`` with a fixed ``k`` so that an
extracted subnet exports to ONNX (``TopK`` + ``GatherElements``).

The supernet holds the weights of the largest config; :meth:`ElasticViTSupernet.extract` copies the active
slices into a :class:`ViTSubnet` made of plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.LayerNorm`` that runs
the very same functions (``_attention_core``, :func:`prune_tokens`) so both compute the same outputs.
:func:`elastic_vit_from_timm` builds a supernet from a timm ViT/DeiT whose largest subnet reproduces it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fitplan.errors import ConfigError
from fitplan.search_spaces.base import Config, Dimension, SearchSpace, UnitCost, register_space
from fitplan.search_spaces.ops import DynamicLayerNorm, DynamicLinear
from fitplan.search_spaces.supernet import Supernet
from fitplan.search_spaces.timm_import import register_timm_converter

__all__ = [
    "MNIST_VIT_SPEC",
    "ElasticViTSpace",
    "ElasticViTSupernet",
    "ViTSubnet",
    "elastic_vit_from_timm",
    "kept_tokens",
    "mlp_hidden",
    "prune_tokens",
]

#: A small variant that trains on CPU on MNIST-5k (1x28x28, 10 classes): 16 patch tokens, <= 64 features.
MNIST_VIT_SPEC: dict[str, Any] = {
    "img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10,
    "embed_dims": [32, 48, 64], "max_depth": 4, "depths": [2, 3, 4], "num_heads": [1, 2, 4], "head_dim": 16,
    "mlp_ratios": [2.0, 3.0, 4.0], "token_layers": [0, 1], "keep_ratios": [1.0, 0.7, 0.5],
}


# ======================================================================= shared math (supernet == subnet)
def kept_tokens(n: int, keep_ratio: float) -> int:
    """Patch tokens kept out of ``n`` for ``keep_ratio``: ``ceil(keep_ratio * n)``, at least 1.

    The product is rounded to 6 decimals first so that e.g. ``0.7 * 10`` gives 7, not 8.
    """
    k = int(math.ceil(round(float(keep_ratio) * n, 6)))
    return max(1, min(n, k))


def mlp_hidden(embed_dim: int, mlp_ratio: float) -> int:
    """MLP hidden width for an embedding width and ratio (rounded to the nearest integer)."""
    return int(round(embed_dim * float(mlp_ratio)))


def _embed_tokens(feat: torch.Tensor, cls_token: torch.Tensor | None, pos_embed: torch.Tensor) -> torch.Tensor:
    """Conv features ``[B, E, h, w]`` -> tokens ``[B, (1 +) h*w, E]`` with CLS prepended and positions added
    (timm's original ViT/DeiT order: concatenate, then add)."""
    x = feat.flatten(2).transpose(1, 2)
    if cls_token is not None:
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + pos_embed


def _attention_core(qkv: torch.Tensor, heads: int, head_dim: int, scale: float,
                    score_mode: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention after the fused q/k/v projection.

    Args:
        qkv: ``[B, T, 3 * heads * head_dim]`` laid out (q|k|v, head, head_dim) like timm's fused ``qkv``.
        score_mode: ``"cls"`` returns the CLS row of the attention (without CLS itself) averaged over
            heads, ``[B, T-1]``; ``"mean"`` the attention each token receives averaged over heads and
            queries, ``[B, T]`` (no class token); ``None`` no scores.

    Returns the context ``[B, T, heads * head_dim]`` (before the output projection) and the scores.
    """
    b, t = qkv.shape[0], qkv.shape[1]
    qkv = qkv.reshape(b, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    ctx = (attn @ v).transpose(1, 2).reshape(b, t, heads * head_dim)
    scores = None
    if score_mode == "cls":
        scores = attn[:, :, 0, 1:].mean(dim=1)
    elif score_mode == "mean":
        scores = attn.mean(dim=(1, 2))
    return ctx, scores


def prune_tokens(x: torch.Tensor, scores: torch.Tensor, keep: int, prefix: int, fuse: bool) -> torch.Tensor:
    """Keep the ``prefix`` (CLS) tokens and the ``keep`` highest-scoring other tokens.

    Args:
        x: tokens ``[B, T, E]``; the first ``prefix`` are never pruned.
        scores: ``[B, T - prefix]`` importance of the other tokens (attention they receive).
        keep: how many of them to keep (a Python int, so ONNX gets a constant ``TopK`` k).
        fuse: append one token that is the score-weighted mean of the dropped ones (EViT).

    Returns ``[B, prefix + keep (+1 if fuse and any was dropped), E]``; kept tokens are in score order
    (attention is permutation invariant, so order does not change the result).
    """
    n = x.shape[1] - prefix
    if keep >= n:
        return x
    dim = x.shape[2]
    patches = x[:, prefix:]
    if fuse:
        vals, idx = scores.topk(n, dim=1)
        keep_idx, rest_idx, rest_w = idx[:, :keep], idx[:, keep:], vals[:, keep:]
    else:
        _, keep_idx = scores.topk(keep, dim=1)
    kept = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, dim))
    parts = [x[:, :prefix], kept] if prefix else [kept]
    if fuse:
        rest = torch.gather(patches, 1, rest_idx.unsqueeze(-1).expand(-1, -1, dim))
        w = rest_w.unsqueeze(-1)
        parts.append((rest * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


def _pool(x: torch.Tensor, class_token: bool) -> torch.Tensor:
    """CLS token, or the mean of all tokens without one."""
    return x[:, 0] if class_token else x.mean(dim=1)


# ======================================================================= space
def _as_int_list(field: str, value: Any, lo: int = 1) -> list[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ConfigError(field, f"expected a non-empty list of integers >= {lo}, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < lo:
            raise ConfigError(field, f"{v!r} is not an integer >= {lo}")
        out.append(int(v))
    return sorted(set(out))


def _as_float_list(field: str, value: Any, lo: float, hi: float) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ConfigError(field, f"expected a non-empty list of numbers in ({lo}, {hi}], got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v <= hi):
            raise ConfigError(field, f"{v!r} is not a number in ({lo}, {hi}]")
        out.append(float(v))
    return sorted(set(out))


def _pos_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"expected a positive integer, got {value!r}")
    return value


@register_space("elastic_vit")
class ElasticViTSpace(SearchSpace):
    """Elastic ViT space: embedding width, depth, heads and MLP ratio per block, token keep ratios.

    The defaults are DeiT-Tiny (192 wide, 12 blocks, 3 heads of 64, MLP ratio 4) as the largest subnet,
    so ``from_timm("deit_tiny_patch16_224")`` and ``ElasticViTSpace()`` agree. :data:`MNIST_VIT_SPEC` is a
    small variant for MNIST.

    Args:
        img_size, patch_size, in_chans, num_classes: input and output; ``img_size % patch_size == 0``.
        embed_dims: embedding width choices (the largest is the supernet's).
        max_depth: blocks in the supernet. depths: depth choices (default ~2/3, 5/6, 1 of ``max_depth``).
        num_heads: head count choices per block. head_dim: fixed width of one head.
        mlp_ratios: MLP ratio choices per block.
        token_layers: block indices after which tokens are pruned (default after 1/3 and 2/3 of
            ``max_depth``); ``[]`` disables token pruning (no ``tokens`` key then).
        keep_ratios: keep ratio choices of the patch tokens at each site (in (0, 1]).
        qkv_bias: bias on the q/k/v projection. class_token: CLS token (pooling by CLS and CLS-attention
            scores); otherwise mean pooling and mean received attention as scores.
        fuse_tokens: merge the pruned tokens into one extra token (EViT) instead of dropping them.
        norm_eps: LayerNorm epsilon (timm ViTs use 1e-6).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (144, 168, 192), max_depth: int = 12,
                 depths: Sequence[int] | None = None, num_heads: Sequence[int] = (1, 2, 3), head_dim: int = 64,
                 mlp_ratios: Sequence[float] = (3.0, 3.5, 4.0), token_layers: Sequence[int] | None = None,
                 keep_ratios: Sequence[float] = (1.0, 0.7, 0.5), qkv_bias: bool = True, class_token: bool = True,
                 fuse_tokens: bool = False, norm_eps: float = 1e-6):
        img_size, patch_size = _pos_int("img_size", img_size), _pos_int("patch_size", patch_size)
        if img_size % patch_size:
            raise ConfigError("patch_size", f"{patch_size} does not divide img_size {img_size}",
                              [d for d in range(1, img_size + 1) if img_size % d == 0])
        in_chans, num_classes = _pos_int("in_chans", in_chans), _pos_int("num_classes", num_classes)
        max_depth, head_dim = _pos_int("max_depth", max_depth), _pos_int("head_dim", head_dim)
        embed = _as_int_list("embed_dims", embed_dims)
        if depths is None:
            depths = [max(1, round(max_depth * f)) for f in (2 / 3, 5 / 6, 1.0)]
        dep = _as_int_list("depths", depths)
        if dep[-1] > max_depth:
            raise ConfigError("depths", f"{dep[-1]} exceeds max_depth {max_depth}", list(range(1, max_depth + 1)))
        heads = _as_int_list("num_heads", num_heads)
        ratios = _as_float_list("mlp_ratios", mlp_ratios, 0.0, 64.0)
        if token_layers is None:
            token_layers = sorted({max(0, max_depth // 3 - 1), max(0, 2 * max_depth // 3 - 1)})
        if isinstance(token_layers, Sequence) and not isinstance(token_layers, str) and len(token_layers) == 0:
            sites: list[int] = []
        else:
            sites = _as_int_list("token_layers", token_layers, lo=0)
        if sites and sites[-1] >= max_depth:
            raise ConfigError("token_layers", f"block {sites[-1]} does not exist", list(range(max_depth)))
        keeps = _as_float_list("keep_ratios", keep_ratios, 0.0, 1.0)
        for field, flag in (("qkv_bias", qkv_bias), ("class_token", class_token), ("fuse_tokens", fuse_tokens)):
            if not isinstance(flag, bool):
                raise ConfigError(field, f"expected a bool, got {flag!r}", [True, False])
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
            raise ConfigError("norm_eps", f"expected a positive number, got {norm_eps!r}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dims=embed, max_depth=max_depth, depths=dep, num_heads=heads, head_dim=head_dim,
                         mlp_ratios=ratios, token_layers=sites, keep_ratios=keeps, qkv_bias=qkv_bias,
                         class_token=class_token, fuse_tokens=fuse_tokens, norm_eps=float(norm_eps))
        self.img_size, self.patch_size, self.in_chans, self.num_classes = img_size, patch_size, in_chans, num_classes
        self.embed_dims, self.max_depth, self.depths = tuple(embed), max_depth, tuple(dep)
        self.num_heads_choices, self.head_dim, self.mlp_ratios = tuple(heads), head_dim, tuple(ratios)
        self.token_layers, self.keep_ratios = tuple(sites), tuple(keeps)
        self.qkv_bias, self.class_token, self.fuse_tokens = qkv_bias, class_token, fuse_tokens
        self.norm_eps = float(norm_eps)
        self.num_patches = (img_size // patch_size) ** 2
        self.prefix = 1 if class_token else 0

    # ----------------------------------------------------------------- dimensions and units
    def arch_dimensions(self) -> list[Dimension]:
        dims = [
            Dimension("embed_dim", self.embed_dims, None, "arch", "token embedding width"),
            Dimension("depth", self.depths, None, "arch", "number of transformer blocks"),
            Dimension("num_heads", self.num_heads_choices, self.max_depth, "arch",
                      f"attention heads per block (head dim {self.head_dim}); ignored beyond depth"),
            Dimension("mlp_ratio", self.mlp_ratios, self.max_depth, "arch",
                      "MLP hidden = embed_dim * ratio, per block; ignored beyond depth"),
        ]
        if self.token_layers:
            dims.append(Dimension("tokens", self.keep_ratios, len(self.token_layers), "tokens",
                                  f"patch-token keep ratio after blocks {list(self.token_layers)}"))
        return dims

    def units(self) -> list[str]:
        """``patch_embed`` (conv + CLS + positions), ``blocks.i.attn`` (norm1 + qkv + proj),
        ``blocks.i.mlp`` (norm2 + fc1 + fc2) for every block, ``head`` (final norm + classifier)."""
        names = ["patch_embed"]
        for i in range(self.max_depth):
            names += [f"blocks.{i}.attn", f"blocks.{i}.mlp"]
        return names + ["head"]

    def input_shape(self, config: Config | None = None) -> tuple[int, ...]:
        return (self.in_chans, self.img_size, self.img_size)

    def build_supernet(self) -> "ElasticViTSupernet":
        return ElasticViTSupernet(self)

    # ----------------------------------------------------------------- tokens and costs
    def keep_plan(self, config: Mapping[str, Any]) -> dict[int, float]:
        """Active pruning sites of a validated config: block index -> keep ratio (sites beyond depth drop)."""
        ratios = config.get("tokens", [])
        return {b: float(r) for b, r in zip(self.token_layers, ratios) if b < config["depth"]}

    def token_counts(self, config: Mapping[str, Any]) -> list[int]:
        """Tokens (incl. CLS) entering each active block, then the count after the last one
        (``depth + 1`` entries). Shared by the supernet, the extracted subnet and the cost model."""
        plan = self.keep_plan(config)
        t = self.prefix + self.num_patches
        counts = [t]
        for i in range(config["depth"]):
            if i in plan:
                n = t - self.prefix
                k = kept_tokens(n, plan[i])
                t = self.prefix + k + (1 if self.fuse_tokens and k < n else 0)
            counts.append(t)
        return counts

    def unit_costs(self, config: Config) -> list[UnitCost]:
        """Analytic costs for one image.

        MACs count the patch-embedding conv, the q/k/v and output projections, ``Q K^T`` and ``A V`` (per
        head ``T^2 * head_dim`` each, with ``T`` the tokens *after* earlier pruning), the two MLP layers and
        the classifier (LayerNorm, softmax, GELU, top-k are not counted). ``params`` count every tensor the
        extracted subnet holds (CLS and position embeddings in ``patch_embed``, norms in their units).
        ``act_elems`` are the elements each unit writes: tokens; q/k/v, the attention matrix, context and
        projection; MLP hidden and output; logits.
        """
        e = config["embed_dim"]
        depth = config["depth"]
        c, p, npatch = self.in_chans, self.patch_size, self.num_patches
        t0 = self.prefix + npatch
        qb = 1 if self.qkv_bias else 0
        out = [UnitCost("patch_embed", macs=e * c * p * p * npatch,
                        params=e * c * p * p + e + self.prefix * e + t0 * e, act_elems=t0 * e)]
        counts = self.token_counts(config)
        for i in range(self.max_depth):
            if i >= depth:
                out += [UnitCost(f"blocks.{i}.attn", active=False), UnitCost(f"blocks.{i}.mlp", active=False)]
                continue
            t = counts[i]
            h = config["num_heads"][i]
            a = h * self.head_dim
            hid = mlp_hidden(e, config["mlp_ratio"][i])
            attn_macs = t * e * 3 * a + 2 * h * t * t * self.head_dim + t * a * e
            attn_params = 2 * e + e * 3 * a + 3 * a * qb + a * e + e
            attn_act = 3 * t * a + h * t * t + t * a + t * e
            out.append(UnitCost(f"blocks.{i}.attn", macs=attn_macs, params=attn_params, act_elems=attn_act))
            out.append(UnitCost(f"blocks.{i}.mlp", macs=2 * t * e * hid, params=2 * e + e * hid + hid + hid * e + e,
                                act_elems=t * hid + t * e))
        k = self.num_classes
        out.append(UnitCost("head", macs=e * k, params=2 * e + e * k + k, act_elems=e + k))
        return out


# ======================================================================= supernet
class DynamicPatchEmbed(nn.Module):
    """Patch embedding (``patch x patch`` conv, stride ``patch``) with elastic output width, plus the CLS
    token and position embeddings, all sliced to the active ``embed_dim``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, max_embed: int, class_token: bool):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        num_patches = (img_size // patch_size) ** 2
        self.weight = nn.Parameter(torch.empty(max_embed, in_chans, patch_size, patch_size))
        self.bias = nn.Parameter(torch.zeros(max_embed))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, max_embed)) if class_token else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + (1 if class_token else 0), max_embed))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.active_out = max_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"elastic_vit expects {self.img_size}x{self.img_size} inputs, got "
                             f"{tuple(x.shape[-2:])}; resize before calling (the supernet does not)")
        e = self.active_out
        feat = F.conv2d(x, self.weight[:e], self.bias[:e], stride=self.patch_size)
        cls = self.cls_token[:, :, :e] if self.cls_token is not None else None
        return _embed_tokens(feat, cls, self.pos_embed[:, :, :e])

    def to_static(self) -> "ViTPatchEmbed":
        e = self.active_out
        m = ViTPatchEmbed(self.weight.shape[1], e, self.patch_size, self.pos_embed.shape[1],
                          self.cls_token is not None)
        with torch.no_grad():
            m.proj.weight.copy_(self.weight[:e])
            m.proj.bias.copy_(self.bias[:e])
            m.pos_embed.copy_(self.pos_embed[:, :, :e])
            if self.cls_token is not None:
                m.cls_token.copy_(self.cls_token[:, :, :e])
        return m


class DynamicQKV(nn.Module):
    """Fused q/k/v projection with elastic heads: weight ``[3 * max_heads * head_dim, max_embed]`` in
    timm's (q|k|v, head, head_dim) row layout; the active rows are the first ``heads`` heads of q, k and v."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.max_heads, self.head_dim = max_heads, head_dim
        self.weight = nn.Parameter(torch.empty(3 * max_heads * head_dim, max_embed))
        self.bias = nn.Parameter(torch.zeros(3 * max_heads * head_dim)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.active_heads = max_heads

    def active_weight(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = self.active_heads * self.head_dim
        w = self.weight.view(3, -1, self.weight.shape[1])[:, :a, :in_features].reshape(3 * a, in_features)
        b = self.bias.view(3, -1)[:, :a].reshape(3 * a) if self.bias is not None else None
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.active_weight(x.shape[-1])
        return F.linear(x, w, b)

    def to_static(self, in_features: int) -> nn.Linear:
        w, b = self.active_weight(in_features)
        lin = nn.Linear(in_features, w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        return lin


class DynamicAttention(nn.Module):
    """Multi-head self-attention with elastic head count and embedding width."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, qkv_bias: bool):
        super().__init__()
        self.head_dim, self.scale = head_dim, head_dim ** -0.5
        self.qkv = DynamicQKV(max_embed, max_heads, head_dim, qkv_bias)
        self.proj = DynamicLinear(max_heads * head_dim, max_embed)

    def forward(self, x: torch.Tensor, score_mode: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx, scores = _attention_core(self.qkv(x), self.qkv.active_heads, self.head_dim, self.scale, score_mode)
        return self.proj(ctx), scores


class DynamicMlp(nn.Module):
    """fc1 -> GELU -> fc2 with elastic hidden and output widths."""

    def __init__(self, max_embed: int, max_hidden: int):
        super().__init__()
        self.fc1 = DynamicLinear(max_embed, max_hidden)
        self.act = nn.GELU()
        self.fc2 = DynamicLinear(max_hidden, max_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DynamicViTBlock(nn.Module):
    """Pre-norm transformer block; prunes tokens after itself when it is an active pruning site."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_hidden: int, qkv_bias: bool,
                 eps: float, class_token: bool, fuse: bool):
        super().__init__()
        self.norm1 = DynamicLayerNorm(max_embed, eps=eps)
        self.attn = DynamicAttention(max_embed, max_heads, head_dim, qkv_bias)
        self.norm2 = DynamicLayerNorm(max_embed, eps=eps)
        self.mlp = DynamicMlp(max_embed, max_hidden)
        self.prefix, self.fuse = (1 if class_token else 0), fuse
        self.keep_ratio: float | None = None  # set by set_active; None = no pruning after this block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = None if self.keep_ratio is None else ("cls" if self.prefix else "mean")
        a, scores = self.attn(self.norm1(x), mode)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        if scores is not None:
            x = prune_tokens(x, scores, kept_tokens(x.shape[1] - self.prefix, self.keep_ratio), self.prefix,
                             self.fuse)
        return x


class ElasticViTSupernet(Supernet):
    """Weight-sharing ViT of an :class:`ElasticViTSpace` (weights of the largest config, sliced)."""

    space: ElasticViTSpace

    def __init__(self, space: ElasticViTSpace):
        super().__init__(space)
        s = space
        e = max(s.embed_dims)
        max_hidden = max(mlp_hidden(d, r) for d in s.embed_dims for r in s.mlp_ratios)
        self.patch_embed = DynamicPatchEmbed(s.img_size, s.patch_size, s.in_chans, e, s.class_token)
        self.blocks = nn.ModuleList(
            DynamicViTBlock(e, max(s.num_heads_choices), s.head_dim, max_hidden, s.qkv_bias, s.norm_eps,
                            s.class_token, s.fuse_tokens) for _ in range(s.max_depth))
        self.norm = DynamicLayerNorm(e, eps=s.norm_eps)
        self.head = DynamicLinear(e, s.num_classes)
        self.active_depth = s.max_depth
        self.set_largest()

    def _set_active(self, config: Config) -> None:
        e = config["embed_dim"]
        self.patch_embed.active_out = e
        self.active_depth = config["depth"]
        plan = self.space.keep_plan(config)
        for i, blk in enumerate(self.blocks):
            blk.attn.qkv.active_heads = config["num_heads"][i]
            blk.attn.proj.active_out = e
            blk.mlp.fc1.active_out = mlp_hidden(e, config["mlp_ratio"][i])
            blk.mlp.fc2.active_out = e
            blk.keep_ratio = plan.get(i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.blocks[:self.active_depth]:
            x = blk(x)
        return self.head(self.norm(_pool(x, self.space.class_token)))

    def _extract(self, config: Config) -> "ViTSubnet":
        s = self.space
        self._set_active(config)  # slices follow the requested config; restored below
        try:
            e = config["embed_dim"]
            counts = s.token_counts(config)
            plan = s.keep_plan(config)
            blocks = []
            for i in range(config["depth"]):
                src = self.blocks[i]
                keep = None
                if i in plan:
                    k = kept_tokens(counts[i] - s.prefix, plan[i])
                    keep = k if k < counts[i] - s.prefix else None
                heads = src.attn.qkv.active_heads
                blk = ViTBlock(
                    norm1=src.norm1.to_static(e),
                    attn=ViTAttention(src.attn.qkv.to_static(e), src.attn.proj.to_static(heads * s.head_dim),
                                      heads, s.head_dim),
                    norm2=src.norm2.to_static(e),
                    mlp=ViTMlp(src.mlp.fc1.to_static(e), src.mlp.fc2.to_static(src.mlp.fc1.active_out)),
                    keep=keep, prefix=s.prefix, fuse=s.fuse_tokens)
                blocks.append(blk)
            module = ViTSubnet(self.patch_embed.to_static(), blocks, self.norm.to_static(e),
                               self.head.to_static(e), s.class_token)
        finally:
            if self.active_config is not None:
                self._set_active(self.active_config)
        units: list[list[str]] = [["patch_embed"]]
        for i in range(s.max_depth):
            active = i < config["depth"]
            units.append([f"blocks.{i}.norm1", f"blocks.{i}.attn"] if active else [])
            units.append([f"blocks.{i}.norm2", f"blocks.{i}.mlp"] if active else [])
        units.append(["norm", "head"])
        module.fitplan_units = units
        return module


# ======================================================================= extracted (static) subnet
class ViTPatchEmbed(nn.Module):
    """Static patch embedding: ``proj`` conv, ``cls_token`` and ``pos_embed`` of the subnet's width."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, num_pos: int, class_token: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embed_tokens(self.proj(x), self.cls_token, self.pos_embed)


class ViTAttention(nn.Module):
    """Static multi-head self-attention (fused ``qkv`` Linear, ``proj`` Linear)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, head_dim: int):
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, head_dim ** -0.5

    def forward(self, x: torch.Tensor, score_mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx, scores = _attention_core(self.qkv(x), self.num_heads, self.head_dim, self.scale, score_mode)
        return self.proj(ctx), scores


class ViTMlp(nn.Module):
    """Static fc1 -> GELU -> fc2."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, nn.GELU(), fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Static pre-norm block; ``keep`` (a constant) patch tokens survive after it when not ``None``."""

    def __init__(self, norm1: nn.LayerNorm, attn: ViTAttention, norm2: nn.LayerNorm, mlp: ViTMlp,
                 keep: int | None, prefix: int, fuse: bool):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.keep, self.prefix, self.fuse = keep, prefix, fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = None if self.keep is None else ("cls" if self.prefix else "mean")
        a, scores = self.attn(self.norm1(x), mode)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        if scores is not None:
            x = prune_tokens(x, scores, self.keep, self.prefix, self.fuse)
        return x


class ViTSubnet(nn.Module):
    """A standalone ViT extracted from :class:`ElasticViTSupernet` (plain torch layers, real sizes).

    Submodules: ``patch_embed``, ``blocks.i.{norm1,attn,norm2,mlp}``, ``norm``, ``head``; pooling is the CLS
    token (or the token mean without one), followed by ``norm`` and ``head``.
    """

    def __init__(self, patch_embed: ViTPatchEmbed, blocks: Sequence[ViTBlock], norm: nn.LayerNorm,
                 head: nn.Linear, class_token: bool):
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm, self.head = norm, head
        self.class_token = class_token
        self.fitplan_units: list[list[str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(_pool(x, self.class_token)))


# ======================================================================= timm import
def _require(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(field, message)


def elastic_vit_from_timm(model: nn.Module, *, embed_dims: Sequence[int] | None = None,
                          depths: Sequence[int] | None = None, num_heads: Sequence[int] | None = None,
                          mlp_ratios: Sequence[float] | None = None, token_layers: Sequence[int] | None = None,
                          keep_ratios: Sequence[float] = (1.0, 0.7, 0.5)) -> ElasticViTSupernet:
    """An :class:`ElasticViTSupernet` whose largest subnet (no pruning) computes ``model`` (a timm
    ``VisionTransformer`` of the original ViT/DeiT kind) in eval mode, weights copied.

    timm's dimensions become the maxima; the other choices default to about 1/3 .. 1 of the heads, 3/4 .. 1
    of the width, 2/3 .. 1 of the depth and MLP ratio ``r-1 .. r``. Unsupported ViT variants (layer scale,
    register tokens, q/k norm, gated attention, ...) raise :class:`ConfigError` naming the feature.
    """
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    _require(isinstance(model, VisionTransformer), "model", f"expected a timm VisionTransformer, got "
             f"{type(model).__name__}")
    pe = model.patch_embed
    img = pe.img_size
    patch = pe.patch_size
    _require(img[0] == img[1] and patch[0] == patch[1], "img_size", "only square images and patches")
    _require(isinstance(pe.norm, nn.Identity) and isinstance(model.norm_pre, nn.Identity), "norm_pre",
             "patch/pre norms are not supported")
    _require(not getattr(model, "dynamic_img_size", False), "dynamic_img_size", "not supported")
    _require(getattr(model, "reg_token", None) is None, "reg_tokens", "register tokens are not supported")
    _require(getattr(model, "attn_pool", None) is None, "global_pool", "attention pooling is not supported")
    _require(model.pos_embed is not None, "pos_embed", "models without position embeddings are not supported")
    _require(model.num_classes > 0 and isinstance(model.head, nn.Linear), "num_classes",
             "a Linear classifier head is required")
    has_cls = model.cls_token is not None
    if has_cls:
        _require(model.global_pool == "token", "global_pool",
                 f"with a class token only 'token' pooling is supported, got {model.global_pool!r}")
        _require(not model.no_embed_class, "no_embed_class",
                 "position embeddings must include the class token (DeiT-3 style is not supported)")
        _require(isinstance(model.fc_norm, nn.Identity), "fc_norm", "not supported with a class token")
        final_norm = model.norm
    else:
        _require(model.global_pool == "avg" and isinstance(model.norm, nn.Identity)
                 and isinstance(model.fc_norm, nn.LayerNorm), "global_pool",
                 "without a class token only 'avg' pooling with fc_norm is supported")
        final_norm = model.fc_norm
    blocks = list(model.blocks)
    b0 = blocks[0]
    e = model.embed_dim
    heads, head_dim = b0.attn.num_heads, b0.attn.head_dim
    hidden = b0.mlp.fc1.out_features
    qkv_bias = b0.attn.qkv.bias is not None
    eps = b0.norm1.eps
    for i, b in enumerate(blocks):
        f = f"blocks.{i}"
        _require(type(b) is Block and type(b.attn) is Attention and type(b.mlp) is Mlp, f,
                 "only plain Block/Attention/Mlp are supported")
        _require(isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity), f + ".ls1",
                 "layer scale is not supported")
        _require(isinstance(b.attn.q_norm, nn.Identity) and isinstance(b.attn.norm, nn.Identity)
                 and getattr(b.attn, "gate", None) is None, f + ".attn", "q/k norm, scale norm, gates unsupported")
        _require(isinstance(b.mlp.norm, nn.Identity) and type(b.mlp.act) is nn.GELU
                 and b.mlp.act.approximate == "none", f + ".mlp", "only exact GELU without norm is supported")
        _require(b.attn.num_heads == heads and b.attn.head_dim == head_dim and b.mlp.fc1.out_features == hidden
                 and (b.attn.qkv.bias is not None) == qkv_bias and b.attn.proj.bias is not None
                 and b.attn.proj.out_features == e and heads * head_dim == b.attn.qkv.out_features // 3,
                 f, "all blocks must have the same shape")
        _require(isinstance(b.norm1, nn.LayerNorm) and b.norm1.eps == eps and b.norm2.eps == eps,
                 f + ".norm1", "LayerNorm with one epsilon is required")
    ratio = hidden / e
    _require(mlp_hidden(e, ratio) == hidden, "mlp_ratio", f"hidden {hidden} is not expressible for width {e}")
    depth = len(blocks)
    if embed_dims is None:
        embed_dims = sorted({max(8, int(round(e * f / 8)) * 8) for f in (0.75, 0.875)} | {e})
    if num_heads is None:
        num_heads = sorted({max(1, round(heads * f)) for f in (1 / 3, 2 / 3, 1.0)})
    if mlp_ratios is None:
        mlp_ratios = sorted({r for r in (ratio - 1.0, ratio - 0.5, ratio) if r > 0})
    _require(max(embed_dims) == e and max(num_heads) == heads and max(mlp_ratios) == ratio
             and (depths is None or max(depths) == depth), "embed_dims",
             f"the largest choices must be the model's (embed {e}, heads {heads}, mlp ratio {ratio}, depth {depth})")
    space = ElasticViTSpace(img_size=img[0], patch_size=patch[0], in_chans=pe.proj.in_channels,
                            num_classes=model.num_classes, embed_dims=embed_dims, max_depth=depth, depths=depths,
                            num_heads=num_heads, head_dim=head_dim, mlp_ratios=mlp_ratios,
                            token_layers=token_layers, keep_ratios=keep_ratios, qkv_bias=qkv_bias,
                            class_token=has_cls, fuse_tokens=False, norm_eps=eps)
    net = ElasticViTSupernet(space)
    with torch.no_grad():
        net.patch_embed.weight.copy_(pe.proj.weight)
        net.patch_embed.bias.copy_(pe.proj.bias)
        net.patch_embed.pos_embed.copy_(model.pos_embed)
        if has_cls:
            net.patch_embed.cls_token.copy_(model.cls_token)
        for dst, src in zip(net.blocks, blocks):
            dst.norm1.weight.copy_(src.norm1.weight)
            dst.norm1.bias.copy_(src.norm1.bias)
            dst.attn.qkv.weight.copy_(src.attn.qkv.weight)  # same (q|k|v, head, head_dim) row layout
            if qkv_bias:
                dst.attn.qkv.bias.copy_(src.attn.qkv.bias)
            dst.attn.proj.weight.copy_(src.attn.proj.weight)
            dst.attn.proj.bias.copy_(src.attn.proj.bias)
            dst.norm2.weight.copy_(src.norm2.weight)
            dst.norm2.bias.copy_(src.norm2.bias)
            dst.mlp.fc1.weight.copy_(src.mlp.fc1.weight)
            dst.mlp.fc1.bias.copy_(src.mlp.fc1.bias)
            dst.mlp.fc2.weight.copy_(src.mlp.fc2.weight)
            dst.mlp.fc2.bias.copy_(src.mlp.fc2.bias)
        net.norm.weight.copy_(final_norm.weight)
        net.norm.bias.copy_(final_norm.bias)
        net.head.weight.copy_(model.head.weight)
        net.head.bias.copy_(model.head.bias)
    return net.train(model.training)


@register_timm_converter("deit_tiny_patch16_224", "vit_tiny_patch16_224", "deit_small_patch16_224",
                         "vit_small_patch16_224", "deit_base_patch16_224", "vit_base_patch16_224")
def _timm_vit_converter(model: nn.Module) -> ElasticViTSupernet:
    """Registered converter: :func:`elastic_vit_from_timm` with default choices."""
    return elastic_vit_from_timm(model)
