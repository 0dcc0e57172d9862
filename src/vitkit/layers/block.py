"""The pre-LN transformer encoder block (ViT, DeiT, BEiT, ...)."""
from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from .attention import Attention
from .drop import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)  # the ViT paper's LayerNorm epsilon


class Block(nn.Module):
    """x + DropPath(LS(Attn(LN(x)))), then x + DropPath(LS(MLP(LN(x)))). Keys as timm's.

    init_values: LayerScale initial gain, or None for no LayerScale.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float | None = None, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer=LayerNorm6):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                n_out: int | None = None) -> Tensor:
        """x: (B, N, D) → (B, N, D), or (B, n_out, D): the outputs of the first n_out tokens only, which still
        attend to all N (the other tokens' queries, projections and MLP are skipped)."""
        h = self.attn(self.norm1(x), mask=mask, bias=bias, n_queries=n_out)
        x = x if n_out is None else x[:, :n_out]
        x = x + self.drop_path1(self.ls1(h))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
