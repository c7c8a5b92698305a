"""Jina's XLM-RoBERTa with rotary positions (jina-colbert-v2's backbone), read from the checkpoint's
own weight names, so no remote code is needed.

The checkpoint's layout (``roberta.`` prefix optional)::

    embeddings.word_embeddings, embeddings.token_type_embeddings (when type_vocab_size > 0), emb_ln
    encoder.layers.{i}.mixer.Wqkv   fused rows q, k, v (with bias)
    encoder.layers.{i}.mixer.out_proj, norm1, mlp.fc1, mlp.fc2, norm2

Each layer is post-LN: ``h = norm1(h + out_proj(attn(Wqkv h)))``, ``h = norm2(h + fc2(act(fc1 h)))``.
Rotary embeddings in the NeoX (half-split) layout, base ``rotary_emb_base``, over the first
``rotary_emb_dim`` dims of each head (default: the whole head).  No absolute positions.  ``pooler.*`` and
LoRA adapters are not loaded (jina-colbert-v2 has none).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, act: str):
        super().__init__()
        self.mixer = nn.Module()
        self.mixer.Wqkv = nn.Linear(hidden, 3 * hidden)
        self.mixer.out_proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(hidden, intermediate)
        self.mlp.fc2 = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.heads = heads
        self.act = _activation(act)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, hidden = h.shape
        d = hidden // self.heads
        qkv = self.mixer.Wqkv(h).view(b, t, 3, self.heads, d)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (b, heads, t, d)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        h = self.norm1(h + self.mixer.out_proj(attn.transpose(1, 2).reshape(b, t, hidden)))
        return self.norm2(h + self.mlp.fc2(self.act(self.mlp.fc1(h))))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class JinaXLMRoberta(nn.Module):
    """``forward(input_ids, attention_mask) -> .last_hidden_state`` (batch, tokens, hidden)."""

    def __init__(self, config: dict):
        super().__init__()
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        eps = config.get("layer_norm_eps", 1e-5)
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        types = config.get("type_vocab_size", 0) or 0
        if types > 0:
            self.embeddings.token_type_embeddings = nn.Embedding(types, hidden)
        self.emb_ln = nn.LayerNorm(hidden, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            _Layer(hidden, heads, config["intermediate_size"], eps, config.get("hidden_act", "gelu"))
            for _ in range(config["num_hidden_layers"])
        )
        head_dim = hidden // heads
        self.rotary_dim = int(config.get("rotary_emb_dim") or head_dim)
        self.rotary_base = float(config.get("rotary_emb_base", 10000.0))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def _rotary(self, t: int, device, dtype):
        r = self.rotary_dim
        inv_freq = 1.0 / (self.rotary_base ** (torch.arange(0, r, 2, device=device, dtype=torch.float32) / r))
        freqs = torch.outer(torch.arange(t, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        h = self.embeddings.word_embeddings(input_ids)
        if hasattr(self.embeddings, "token_type_embeddings"):
            h = h + self.embeddings.token_type_embeddings(torch.zeros_like(input_ids))
        h = self.emb_ln(h)
        cos, sin = self._rotary(input_ids.shape[1], h.device, h.dtype)
        key_mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            h = layer(h, cos, sin, key_mask)
        return SimpleNamespace(last_hidden_state=h)
