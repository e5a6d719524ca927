"""The BART-fusion block (SPEC §1.3): lyrics tokens attend to the music tokens.

    Q = Linear(d, d)(text)          K = Linear(m, d)(music)          V = Linear(m, d)(music)
    a = MultiheadAttention(d, heads)(Q, K, V)            # masked only where a batch pads music
    text = LayerNorm_new(text + scale * a)               # scale 0.1; a NEW LayerNorm, not BART's

The reference projects Q/K/V before `nn.MultiheadAttention`, which projects them again; those
extra Linear layers are kept, so the function and every parameter the reference uses are here.
The parameter count is the reference's used parameters only: the reference also defines a
`_linear_4` that its forward never calls, which this block leaves out.

Initialisation as the reference, whose Hugging Face `_init_weights` visits every `nn.Linear` of
the model: weights normal(0, init_std = 0.02), biases zero — Q/K/V, the attention's output
projection and the gate. The attention's packed input projection is not an `nn.Linear` and keeps
PyTorch's own (xavier-uniform) init there as here. `init_std=None` leaves PyTorch's defaults.
An optional sigmoid gate (off in the reference) scales `a` per feature.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionBlock(nn.Module):
    """Cross-attention from text (B, L, d) to music (B, M, m), returning updated text (B, L, d)."""

    def __init__(
        self,
        d_model: int,
        music_dim: int,
        num_heads: int = 1,
        scale: float = 0.1,
        gate: bool = False,
        dropout: float = 0.0,
        init_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(music_dim, d_model)
        self.value = nn.Linear(music_dim, d_model)
        self.attention = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.layer_norm = nn.LayerNorm(d_model)
        # Gate g = sigmoid(W [text; a]) in (0, 1) per feature: how much of the music to let in.
        self.gate = nn.Linear(2 * d_model, d_model) if gate else None
        if init_std is not None:
            for module in self.modules():
                if isinstance(module, nn.Linear):  # includes the attention's out_proj
                    nn.init.normal_(module.weight, mean=0.0, std=init_std)
                    nn.init.zeros_(module.bias)

    def forward(
        self, text: torch.Tensor, music: torch.Tensor, music_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # text: (B, L, d); music: (B, M, m), where a song heard in W windows brings its windows'
        # tokens one after the other (M = W * 119); music_mask (B, M): 1 for real tokens, 0 for
        # the padding of a song with fewer windows than the longest in the batch (None: all real);
        # a row of zeros is a song without music (a text-only row): its text is only normalised.
        q = self.query(text)  # (B, L, d)
        k = self.key(music)  # (B, M, d)
        v = self.value(music)  # (B, M, d)
        padding, heard = None, None
        if music_mask is not None:
            heard = music_mask.bool().any(dim=1)  # (B,): False for a text-only row
            # A row with no music at all would attend to nothing (a softmax over no keys is
            # NaN): it attends to its zero padding instead, and its result is zeroed below.
            padding = ~music_mask.bool() & heard[:, None]  # (B, M), True = ignore
        attended, _ = self.attention(
            q, k, v, key_padding_mask=padding, need_weights=False
        )  # (B, L, d)
        if self.gate is not None:
            attended = attended * torch.sigmoid(self.gate(torch.cat([text, attended], dim=-1)))
        if heard is not None:
            attended = attended * heard[:, None, None].to(attended.dtype)  # no music, no update
        return self.layer_norm(text + self.scale * attended)
