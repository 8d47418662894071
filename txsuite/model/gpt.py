"""The reference Transformer: a GPT-style decoder (pre-LN, causal SDPA attention, GELU MLP,
tied input/output embeddings), after nanoGPT's model.py.

Pure PyTorch: no device, precision, parallelism or checkpointing code lives here. Techniques
are applied from outside (txsuite/techniques/), relying only on these module names:
    model.tok_emb, model.pos_emb, model.blocks[i].{ln1, attn.{qkv, proj}, ln2, mlp.{fc, proj}},
    model.ln_f, model.lm_head (weight tied to tok_emb)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    max_seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    dropout: float = 0.0
    # "sdpa": F.scaled_dot_product_attention (flash/efficient kernels where available);
    # "matmul": the same maths as two explicit matmuls and a softmax. On CPUs with native bf16
    # the matmul form is the faster one in bf16, SDPA's CPU kernel in fp32 (docs/measurements.md,
    # "Precision, attention, batch and checkpointing"). It materialises the [T, T] scores:
    # O(T^2) memory.
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.attention = cfg.attention
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # [B, T, 3 * H * D] -> three [B, H, T, D]. H is inferred from the projection's output, not
        # taken from n_head: tensor parallelism gives each rank only its share of the heads.
        q, k, v = self.qkv(x).view(B, T, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "matmul":
            y = matmul_attention(q, k, v, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, -1)  # [B, T, H * D]
        return self.resid_drop(self.proj(y))


def attention_kernels() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """name -> causal attention(q, k, v) without dropout, for [B, H, T, D] tensors: the kernels
    `attention` may name (what `model.attention: auto` chooses between, from outside the model)."""
    return {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "matmul": lambda q, k, v: matmul_attention(q, k, v, 0.0)}


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention as explicit matmuls. q, k, v: [B, H, T, D] -> [B, H, T, D].
    The scale and the causal mask ride in the scores' GEMM (baddbmm adds the -inf mask), and
    the softmax runs on the scores' dtype: its CPU and CUDA kernels accumulate reduced-precision
    inputs in fp32, so under bf16 autocast it gives an upcast softmax's weights without writing
    and keeping an fp32 [B, H, T, T] copy of the scores (the copy cost a bf16 step more than
    the softmax itself)."""
    B, H, T, D = q.shape
    future = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu(1)  # [T, T]
    # [B * H, T, T]; the reshape copies q and k (their heads are strided views of the qkv output)
    scores = torch.baddbmm(future, q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2),
                           alpha=D ** -0.5)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return weights.view(B, H, T, T) @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact (erf) GELU, as nanoGPT: on CPU its kernels are faster than the tanh
        # approximation's (GPT-2's "gelu_new"); docs/measurements.md, "The harness against a
        # plain loop and against peers"
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # pre-LN residual branches
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: int64 [B, T] token ids -> logits [B, T, vocab_size].

        A pipeline stage is a copy of this model with the parts it does not own set to None
        (torchtitan's convention): without tok_emb the input is already hidden states
        [B, T, C]; without lm_head the output is hidden states [B, T, C]."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        if self.tok_emb is not None:
            pos = torch.arange(T, device=idx.device)
            x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # [B, T, C]
        else:
            x = idx
        for block in self.blocks:
            x = block(x)
        if self.lm_head is None:
            return x
        return self.lm_head(self.ln_f(x))  # [B, T, V]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied lm_head counted once). non_embedding drops tok/pos tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over scored positions (targets == -100 are ignored).
    logits [B, T, V] (any float dtype; upcast to fp32 for a stable log-softmax), targets [B, T]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def language_modelling(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training objective: next-token cross-entropy of model(x) [B, T, V] against y [B, T]
    (a trainer's default; distillation is another objective of the same signature)."""
    return lm_loss(model(x), y)


def sequence_loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of next-token cross-entropy and counts of scored tokens, in fp64:
    logits [B, T, V], targets [B, T] (-100 ignored) -> ([B], [B])."""
    token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
    return token.view(targets.shape).double().sum(dim=1), (targets != -100).sum(dim=1)
