#!/usr/bin/env python3
"""Experiment 1's five models in plain PyTorch, timed against ablate's CUDA training step.

The models are those of examples/exp1_ablation.cpp under the fixed protocol, at the seed's full
size (d 512, 8 heads, 3 layers, vocabulary 49152, batch 16 x 256 tokens), written with nothing
but torch: pre-norm RMSNorm blocks, tied embedding / LM head, dropout 0.1, and

  baseline                  MHA + the seed's MoE (8 MLP experts of width 1024, top-2,
                            noisy softmax router, load-balancing loss)
  mlp_512d                  MHA + GatedMLP 512 -> 2048 (SwiGLU)
  attention_mlp_512d        MLA (DeepSeek-V3 latent attention) + GatedMLP
  moe_8e_2k_512d            MHA + GLM4 / DeepSeek-V3 MoE (sigmoid router, 8 GatedMLP experts
                            of width 1024, top-2, one shared expert)
  attention_moe_8e_2k_512d  MLA + the same MoE

One training step is forward, loss (cross-entropy + auxiliary loss), backward,
clip_grad_norm_(1.0) and the seed's optimizer pair (torch.optim.Muon on the 2-D hidden weights,
AdamW on the rest), under bf16 autocast on the same fixed batch as ablate's benchmark.  Each
model is timed in eager mode and compiled with torch.compile; the mean step time of --steps
steps after --warmup steps (compilation happens in the warm-up) gives tokens/s, as ablate's
BM_TrainStep does (Google Benchmark's mean over its iterations, then the median of its
repetitions), so that an occasional slow step counts on both sides.  Every Linear and the
embedding start from normal(0, 0.02), as under the fixed protocol (the init sets the MoE's
first expert loads, so both sides start from the same kind of routing).

With --ablate-bench PATH the built bench_cuda program is run first, its BM_TrainStep/<model>
tokens/s read from its JSON report, and both are printed side by side:

  python3 benchmarks/pytorch_reference.py --ablate-bench <build>/benchmarks/bench_cuda \
      --markdown results-table.md

Needs a CUDA GPU and PyTorch >= 2.4 (written against 2.11; torch.optim.Muon needs >= 2.9,
AdamW takes every parameter without it).
"""

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass

# Experiment 1's models, in its table's order (MODELS below builds them).
MODEL_NAMES = ("baseline", "mlp_512d", "attention_mlp_512d", "moe_8e_2k_512d",
               "attention_moe_8e_2k_512d")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Experiment 1's five models in plain PyTorch (eager and torch.compile, bf16 "
                    "autocast): training-step tokens/s, side by side with ablate's bench_cuda.")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                        metavar="MODEL", help="models to time (default: all five: %(choices)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps before them, compilation included (default 5)")
    parser.add_argument("--no-compile", action="store_true", help="time eager mode only")
    parser.add_argument("--max-autotune", action="store_true",
                        help='also time torch.compile(mode="max-autotune-no-cudagraphs") (slow to compile)')
    parser.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    parser.add_argument("--ablate-bench", metavar="PATH",
                        help="ablate's built bench_cuda program: run its BM_TrainStep benchmarks "
                             "and print their tokens/s beside PyTorch's")
    parser.add_argument("--ablate-json", metavar="FILE",
                        help="instead of running bench_cuda, read the JSON report it wrote earlier "
                             "(--benchmark_out=FILE --benchmark_out_format=json)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the table as Markdown to FILE (overwritten)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if args.no_compile and args.max_autotune:
        parser.error("--max-autotune times a compiled model: drop --no-compile")
    if args.ablate_bench and args.ablate_json:
        parser.error("--ablate-bench runs bench_cuda, --ablate-json reads its report: give one")
    return args


try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # a setup problem, reported plainly (after --help and flag errors)
    if __name__ == "__main__":
        parse_args()
    sys.exit(f"pytorch_reference.py: PyTorch is needed (2.4 or newer, written against 2.11): {error}")


# ---------------------------------------------------------------------------------------------
# Sizes and constants: ablate's ModelConfig defaults with Experiment 1's settings (the seed's).

@dataclass(frozen=True)
class Config:
    vocab_size: int = 49152
    hidden_size: int = 512
    num_attention_heads: int = 8
    num_hidden_layers: int = 3
    intermediate_size: int = 2048      # dense GatedMLP width
    batch: int = 16
    seq: int = 256
    hidden_dropout: float = 0.1        # embedding, residual branches, final norm, MLP expert inner
    attention_dropout: float = 0.1     # on the attention probabilities
    rms_norm_eps: float = torch.finfo(torch.float32).eps  # torch.nn.RMSNorm's default
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    # Multi-head latent attention as Experiment 1 configured it.
    q_lora_rank: int = 128
    kv_lora_rank: int = 128
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 64
    v_head_dim: int = 64
    mla_attention_bias: bool = True
    mla_rms_norm_eps: float = 1e-6
    # Mixture of experts.
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 1024
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    router_aux_loss_coef: float = 0.01
    router_noise_std: float = 0.1


# ---------------------------------------------------------------------------------------------
# Norm and rotary embeddings.

class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), computed in float32 whatever the input dtype (so a
    bf16 latent is normalised as precisely as the float32 residual stream), returned in the
    input's dtype."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)


def rope_tables(seq, dim, theta):
    """cos, sin [seq, dim / 2]: pair i of a head turns by position * theta^(-2i / dim)."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq
    return angle.cos().float(), angle.sin().float()


def rope_interleaved(x, cos, sin):
    """Standard attention's RoPE on x [..., T, D]: pair (2i, 2i+1) rotates in place."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def rope_deepseek(x, cos, sin):
    """DeepSeek's RoPE: de-interleave (pair i moves to i and i + D/2), then rotate-half."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


# ---------------------------------------------------------------------------------------------
# Attention.

class MultiHeadAttention(nn.Module):
    """The seed's standard attention: fused qkv (no bias), RoPE on interleaved pairs, causal
    scaled dot-product attention with dropout on the probabilities, o_proj (no bias)."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = d // self.heads
        self.dropout = cfg.attention_dropout
        self.qkv_proj = nn.Linear(d, 3 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        cos, sin = rope_tables(cfg.seq, self.head_dim, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x):
        batch, seq, d = x.shape
        # Columns of qkv: [q | k | v], each heads x head_dim.
        qkv = self.qkv_proj(x).view(batch, seq, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        cos, sin = self.cos[:seq], self.sin[:seq]
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, d))


class MultiLatentAttention(nn.Module):
    """DeepSeek-V3 multi-head latent attention (HF DeepseekV3Attention), causal:
    q = q_b(norm(q_a(x))); [latent | k_rot] = kv_a(x); [k_nope | v] per head = kv_b(norm(latent));
    k_rot is one rotary key shared by all heads."""

    def __init__(self, cfg):
        super().__init__()
        d, self.heads = cfg.hidden_size, cfg.num_attention_heads
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.dropout = cfg.attention_dropout
        qk, bias, eps = self.nope + self.rope, cfg.mla_attention_bias, cfg.mla_rms_norm_eps
        self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=bias)
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.kv_lora_rank + self.rope, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, eps)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, self.heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, d, bias=bias)
        self.scale = qk ** -0.5
        cos, sin = rope_tables(cfg.seq, self.rope, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x):
        batch, seq, _ = x.shape
        heads = self.heads
        cos, sin = self.cos[:seq], self.sin[:seq]
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rot = q.view(batch, seq, heads, -1).transpose(1, 2).split((self.nope, self.rope), dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split((self.kv_lora_rank, self.rope), dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(batch, seq, heads, -1).transpose(1, 2)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
        q = torch.cat((q_nope, rope_deepseek(q_rot, cos, sin)), dim=-1)
        k_rot = rope_deepseek(k_rot.unsqueeze(1), cos, sin).expand(batch, heads, seq, self.rope)
        k = torch.cat((k_nope, k_rot), dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True, scale=self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, heads * self.v_dim))


# ---------------------------------------------------------------------------------------------
# Feed-forward blocks.

class GatedMLP(nn.Module):
    """SwiGLU (DeepseekV3MLP): down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden, width):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SeedExpert(nn.Module):
    """The seed's expert: down(dropout(silu(up(x)))), no biases."""

    def __init__(self, hidden, width, dropout):
        super().__init__()
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.down_proj(self.dropout(F.silu(self.up_proj(x))))


def expert_counts(indices, experts):
    """Slots routed to each expert, [experts] int64.  scatter_add_ keeps the shape static
    (bincount's depends on the data), so torch.compile traces it without a break."""
    flat = indices.flatten()
    return torch.zeros(experts, dtype=flat.dtype, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat))


def dispatch(x, indices, weights, experts, counts):
    """Routed experts the usual PyTorch way: sort the N*K (token, expert) slots by expert, run
    each expert once on its contiguous run of gathered tokens, index_add_ the weighted outputs
    back.  x [N, d]; indices, weights [N, K]; counts [E]."""
    top_k = indices.shape[1]
    order = indices.flatten().sort(stable=True).indices
    token = order // top_k                      # the token of each sorted slot
    slot_weight = weights.flatten()[order].unsqueeze(1)
    gathered = x.index_select(0, token)
    out = torch.zeros_like(x)
    sizes = counts.tolist()  # the one host sync: the loop needs the run lengths
    start = 0
    for expert, size in zip(experts, sizes):
        if size == 0:
            continue
        end = start + size
        y = expert(gathered[start:end]) * slot_weight[start:end]
        out.index_add_(0, token[start:end], y.to(out.dtype))
        start = end
    return out


class SeedMoE(nn.Module):
    """The seed's baseline MoE: router logits (+ N(0, 0.1) noise in training), top-K by logit,
    combine weights = softmax over the K chosen logits; load-balancing loss
    coef * E * sum_e f_e * P_e (f_e: fraction of the slots routed to e, a count; P_e: mean
    softmax probability of e).  Returns (y, aux)."""

    def __init__(self, cfg):
        super().__init__()
        self.experts_count, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.noise_std, self.aux_coef = cfg.router_noise_std, cfg.router_aux_loss_coef
        self.gate = nn.Linear(cfg.hidden_size, self.experts_count, bias=False)
        self.experts = nn.ModuleList(
            SeedExpert(cfg.hidden_size, cfg.moe_intermediate_size, cfg.hidden_dropout)
            for _ in range(self.experts_count))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        logits = self.gate(flat).float()  # routing and its softmaxes in float32
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        top_logits, indices = logits.topk(self.top_k, dim=-1)
        counts = expert_counts(indices, self.experts_count)
        y = dispatch(flat, indices, top_logits.softmax(dim=-1), self.experts, counts)
        aux = None
        if self.training and self.aux_coef != 0:
            fraction = counts.float() / indices.numel()
            mean_prob = logits.softmax(dim=-1).mean(dim=0)
            aux = self.aux_coef * self.experts_count * (fraction * mean_prob).sum()
        return y.view_as(x), aux


class Glm4MoE(nn.Module):
    """GLM4 / DeepSeek-V3 MoE: sigmoid scores; the score-correction bias (a buffer) only
    chooses experts; group-limited top-K; weights = chosen scores, normalised over the K when
    norm_topk_prob, times routed_scaling_factor; plus shared GatedMLP experts on every token.
    No auxiliary loss."""

    def __init__(self, cfg):
        super().__init__()
        self.experts_count, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.gate = nn.Linear(cfg.hidden_size, self.experts_count, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.experts_count))
        self.experts = nn.ModuleList(
            GatedMLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(self.experts_count))
        self.shared_experts = None
        if cfg.n_shared_experts > 0:
            self.shared_experts = GatedMLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)

    def route(self, flat):
        scores = self.gate(flat).float().sigmoid()
        choice = scores + self.e_score_correction_bias
        if self.topk_group < self.n_group:  # with every group kept this step changes nothing
            grouped = choice.view(-1, self.n_group, self.experts_count // self.n_group)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            kept = group_scores.topk(self.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_scores).scatter_(1, kept, 1.0)
            choice = (grouped * keep.unsqueeze(-1)).flatten(1)  # dropped groups score 0
        indices = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return indices, weights * self.scaling

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        indices, weights = self.route(flat)
        y = dispatch(flat, indices, weights, self.experts, expert_counts(indices, self.experts_count))
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view_as(x)


# ---------------------------------------------------------------------------------------------
# The model.

class DecoderLayer(nn.Module):
    """Pre-norm block: x += drop(attn(norm(x))); x += drop(ffn(norm(x))).  Returns (x, aux)."""

    def __init__(self, cfg, attention, ffn):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = ffn(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x)))
        y, aux = self.mlp(self.post_attention_layernorm(x)), None
        if isinstance(y, tuple):  # an MoE with a load-balancing loss
            y, aux = y
        return x + self.dropout(y), aux


class LanguageModel(nn.Module):
    """Embedding x sqrt(d) -> dropout -> layers -> RMSNorm -> dropout -> tied LM head; forward
    returns the training loss (mean cross-entropy + the layers' auxiliary losses)."""

    def __init__(self, cfg, attention, ffn):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, attention, ffn) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        init_weights(self, cfg.initializer_range)

    # Embedding and head are methods of their own so that torch.compile still compiles them
    # when an MoE's graph break inside the layer loop makes it run forward() itself eagerly.
    def embed(self, inputs):
        return self.dropout(self.embed_tokens(inputs) * math.sqrt(self.cfg.hidden_size))

    def head_loss(self, x, targets):
        logits = F.linear(self.dropout(self.norm(x)), self.embed_tokens.weight)  # tied head
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def forward(self, inputs, targets):
        x = self.embed(inputs)
        aux_total = None
        for layer in self.layers:
            x, aux = layer(x)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        loss = self.head_loss(x, targets)
        return loss if aux_total is None else loss + aux_total


def init_weights(module, std):
    """The fixed protocol's init: every Linear and the embedding normal(0, std), biases zero."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    for child in module.children():
        init_weights(child, std)


def dense_gated_mlp(cfg):
    return GatedMLP(cfg.hidden_size, cfg.intermediate_size)


# name -> (attention, feed-forward); the names are ablate's (examples/exp1_ablation.cpp).
MODELS = {
    "baseline": (MultiHeadAttention, SeedMoE),
    "mlp_512d": (MultiHeadAttention, dense_gated_mlp),
    "attention_mlp_512d": (MultiLatentAttention, dense_gated_mlp),
    "moe_8e_2k_512d": (MultiHeadAttention, Glm4MoE),
    "attention_moe_8e_2k_512d": (MultiLatentAttention, Glm4MoE),
}
assert tuple(MODELS) == MODEL_NAMES

# ablate's parameter counts at vocabulary 49152 (exp1_ablation --params --vocab 49152).
ABLATE_PARAMS = {
    "baseline": 53_493_248,
    "mlp_512d": 37_752_320,
    "attention_mlp_512d": 36_281_024,
    "moe_8e_2k_512d": 70_794_752,
    "attention_moe_8e_2k_512d": 69_323_456,
}


def build_model(name, cfg, device):
    attention, ffn = MODELS[name]
    return LanguageModel(cfg, attention, ffn).to(device)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())  # the tied head is counted once


# ---------------------------------------------------------------------------------------------
# Optimizers and the training step.

def make_optimizers(model, device):
    """The seed's hybrid: Muon (lr 0.01, momentum 0.95, Nesterov, 5 Newton-Schulz steps, update
    scaled by sqrt(max(1, rows/cols)), no weight decay) on every 2-D weight but the embedding,
    AdamW (lr 1e-3, weight decay 0.1) on the embedding / tied head, norms and biases."""
    embedding = model.embed_tokens.weight
    matrices = [p for p in model.parameters() if p.ndim == 2 and p is not embedding]
    others = [p for p in model.parameters() if not (p.ndim == 2 and p is not embedding)]
    adamw_options = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                         fused=device.type == "cuda")
    if not hasattr(torch.optim, "Muon"):
        return [torch.optim.AdamW(matrices + others, **adamw_options)]
    try:
        muon = torch.optim.Muon(matrices, lr=0.01, weight_decay=0.0, momentum=0.95, nesterov=True,
                                ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5,
                                adjust_lr_fn="original")
    except TypeError:  # a release without those keywords: its defaults are these settings
        muon = torch.optim.Muon(matrices, lr=0.01, weight_decay=0.0, momentum=0.95, nesterov=True)
    return [muon, torch.optim.AdamW(others, **adamw_options)]


def fixed_batch(cfg, device):
    """The batch of ablate's BM_TrainStep benchmarks (bench_cpu.cpp): inputs[i] = 7919 i mod V,
    targets[i] = (104729 i + 1) mod V, i = b * seq + t."""
    i = torch.arange(cfg.batch * cfg.seq, dtype=torch.int64)
    inputs = (i * 7919) % cfg.vocab_size
    targets = (i * 104729 + 1) % cfg.vocab_size
    return (inputs.view(cfg.batch, cfg.seq).to(device), targets.view(cfg.batch, cfg.seq).to(device))


def make_train_step(forward, params, optimizers, inputs, targets, device):
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for optimizer in optimizers:
            optimizer.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        return loss
    return step


@dataclass
class Timing:
    step_s: float      # mean step time
    warmup_s: float    # warm-up wall time, compilation included
    loss: float        # loss of the last warm-up step (a sanity check, ~ln V at the start)


def time_training(name, cfg, device, steps, warmup, compile_mode=None):
    """Builds a fresh model (same seed every time) and times its training step."""
    torch.manual_seed(1234)
    model = build_model(name, cfg, device)
    model.train()
    optimizers = make_optimizers(model, device)
    params = list(model.parameters())
    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    inputs, targets = fixed_batch(cfg, device)
    step = make_train_step(forward, params, optimizers, inputs, targets, device)

    begin = time.perf_counter()
    loss = None
    for _ in range(warmup):
        loss = step()
    last_loss = float(loss) if loss is not None else float("nan")  # synchronises
    warmup_s = time.perf_counter() - begin

    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return Timing(statistics.fmean(times), warmup_s, last_loss)


def release_memory():
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()  # compiled code is cached per code object, shared by the models


# ---------------------------------------------------------------------------------------------
# ablate's side: run bench_cuda and read BM_TrainStep/<model> tokens/s from its JSON report.

# Name segments Google Benchmark appends to a benchmark's name.
_GB_SUFFIX = re.compile(r"^(real_time|manual_time|process_time|(iterations|repeats|threads):\d+"
                        r"|min_(warmup_)?time:.*)$")


def ablate_model_of(run_name):
    """'BM_TrainStep/<model>[/real_time...]' (or 'BM_TrainStep_<model>') -> model, else None."""
    parts = [p for p in run_name.split("/") if not _GB_SUFFIX.match(p)]
    if len(parts) == 2 and parts[0] == "BM_TrainStep":
        return parts[1]
    if len(parts) == 1 and parts[0].startswith("BM_TrainStep_"):
        return parts[0][len("BM_TrainStep_"):]
    return None


def parse_ablate_report(report):
    """{model: tokens/s}: the median aggregate where there is one, else the mean of the runs
    (else the mean aggregate); and {model: error message} for benchmarks that failed."""
    medians, means, runs, errors = {}, {}, defaultdict(list), {}
    for entry in report.get("benchmarks", []):
        name = entry.get("run_name")
        if not name:  # older reports: aggregates are named '<run>_<aggregate>'
            name = entry.get("name", "")
            aggregate = entry.get("aggregate_name")
            if entry.get("run_type") == "aggregate" and aggregate and name.endswith("_" + aggregate):
                name = name[: -len(aggregate) - 1]
        model = ablate_model_of(name)
        if model is None:
            continue
        if entry.get("error_occurred"):
            errors[model] = entry.get("error_message", "error")
            continue
        if "tokens/s" not in entry:
            continue
        value = float(entry["tokens/s"])
        if entry.get("run_type") == "aggregate":
            if entry.get("aggregate_name") == "median":
                medians[model] = value
            elif entry.get("aggregate_name") == "mean":
                means[model] = value
        else:
            runs[model].append(value)
    result = {}
    for model in set(medians) | set(means) | set(runs):
        if model in medians:
            result[model] = medians[model]
        elif runs[model]:
            result[model] = statistics.fmean(runs[model])
        else:
            result[model] = means[model]
    return result, errors


def tail(text, lines=40):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def bench_environment(device):
    """The environment for bench_cuda: it runs on its CUDA device 0, so a --device cuda:N is
    passed on through CUDA_VISIBLE_DEVICES."""
    env = dict(os.environ)
    if device.index not in (None, 0):
        visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[device.index] if device.index < len(visible) else str(device.index)
    return env


class AblateBenchFailed(Exception):
    """bench_cuda failed or left no report: the PyTorch runs go on without the ablate column."""


def run_ablate_bench(path, models, device):
    if not os.path.isfile(path):
        fail(f"--ablate-bench: no such file: {path} (build the project's bench_cuda first)")
    if not os.access(path, os.X_OK):
        fail(f"--ablate-bench: not executable: {path}")
    if set(models) == set(MODELS):
        pattern = "TrainStep"
    else:  # only the chosen models ("." matches '/' or '_'; the end stops at a suffix)
        pattern = "TrainStep.(" + "|".join(models) + ")($|/)"
    with tempfile.TemporaryDirectory() as folder:
        out_file = os.path.join(folder, "ablate.json")
        command = [path, f"--benchmark_filter={pattern}", "--benchmark_format=json",
                   "--benchmark_repetitions=3", f"--benchmark_out={out_file}",
                   "--benchmark_out_format=json"]
        print("ablate: " + " ".join(command[:4]), flush=True)
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=bench_environment(device))
        except OSError as error:
            raise AblateBenchFailed(f"cannot run {path}: {error}") from error
        if done.returncode != 0:
            raise AblateBenchFailed(f"{path} exited with status {done.returncode}; the end of its "
                                    "output:\n" + tail(done.stderr or done.stdout))
        text = ""
        if os.path.isfile(out_file):
            with open(out_file, encoding="utf-8") as f:
                text = f.read()
        if not text.strip():  # fall back on the report it printed
            text = done.stdout[done.stdout.find("{"):] if "{" in done.stdout else ""
    try:
        report = json.loads(text)
    except json.JSONDecodeError as error:
        raise AblateBenchFailed(f"{path} wrote no readable JSON report ({error}); the end of its "
                                "output:\n" + tail(done.stderr or done.stdout)) from error
    return ablate_rates(report, models)


def read_ablate_json(path, models):
    """The rates of a bench_cuda JSON report written earlier (--benchmark_out)."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as error:
        fail(f"--ablate-json: cannot read {path}: {error}")
    except ValueError as error:  # not JSON, or not text at all
        raise AblateBenchFailed(f"{path} is not a readable JSON report ({error})") from error
    return ablate_rates(report, models)


def ablate_rates(report, models):
    """({model: tokens/s}, the report's context), saying which models have no rate and why."""
    rates, errors = parse_ablate_report(report)
    for model in models:
        if model in errors:
            print(f"ablate: BM_TrainStep/{model} failed: {errors[model]}", file=sys.stderr)
        elif model not in rates:
            print(f"ablate: no BM_TrainStep/{model} in the report (found: "
                  f"{', '.join(sorted(rates)) or 'none'})", file=sys.stderr)
    context = report.get("context", {})
    return rates, context


# ---------------------------------------------------------------------------------------------
# Output.

def fail(message):
    sys.exit(f"pytorch_reference.py: error: {message}")


def format_rate(value):
    return "n/a" if value is None else f"{value:,.0f}"


def format_ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def results_table(rows, columns):
    """rows: dicts keyed by model, params and each (key, title) in columns (rates in tokens/s);
    ratios of ablate to every PyTorch column are added where ablate was run."""
    with_ablate = any(row.get("ablate") is not None for row in rows)
    pytorch_columns = [c for c in columns if c[0] != "ablate"]
    header = ["model", "params"] + [title for _, title in columns]
    if with_ablate:
        header += [f"ablate/{short}" for short in (shorten(k) for k, _ in pytorch_columns)]
    body = []
    for row in rows:
        line = [row["model"], f"{row['params']:,}"] + [format_rate(row.get(k)) for k, _ in columns]
        if with_ablate:
            line += [format_ratio(row.get("ablate"), row.get(k)) for k, _ in pytorch_columns]
        body.append(line)
    return header, body


def shorten(key):
    return {"eager": "eager", "compile": "compile", "autotune": "max-autotune"}[key]


def print_table(header, body):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for cells in body:
        print(line(cells))


def markdown_table(header, body):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def check_environment(device_name):
    major_minor = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if major_minor < (2, 4):
        fail(f"PyTorch {torch.__version__} is too old: 2.4 or newer is needed (written against 2.11)")
    try:
        device = torch.device(device_name)
    except RuntimeError as error:
        fail(f"--device {device_name}: {error}")
    if device.type != "cuda":
        fail(f"--device {device_name}: this benchmark runs on a CUDA GPU (bf16 autocast on CUDA)")
    if not torch.cuda.is_available():
        fail(f"no CUDA device: torch.cuda.is_available() is False (PyTorch {torch.__version__}, "
             f"built for CUDA {torch.version.cuda or 'none'})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        fail(f"--device {device_name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def main(argv=None):
    args = parse_args(argv)
    device = check_environment(args.device)
    if device.index is not None:
        torch.cuda.set_device(device.index)
    device = torch.device("cuda", torch.cuda.current_device())
    torch.set_float32_matmul_precision("high")  # TF32 for the few float32 matmuls left
    cfg = Config()
    tokens = cfg.batch * cfg.seq
    gpu = torch.cuda.get_device_name(device)

    # ablate first: it fails fast on a bad path, and runs while the GPU is otherwise idle.  If
    # bench_cuda fails, PyTorch is still timed and the run ends with status 1.
    ablate, failures = {}, 0
    with_ablate = bool(args.ablate_bench or args.ablate_json)
    try:
        if args.ablate_bench:
            ablate, _ = run_ablate_bench(args.ablate_bench, args.models, device)
        elif args.ablate_json:
            ablate, _ = read_ablate_json(args.ablate_json, args.models)
    except AblateBenchFailed as error:
        failures += 1
        print(f"ablate: {error}\nablate: going on without ablate's numbers", file=sys.stderr)

    has_muon = hasattr(torch.optim, "Muon")
    optimizer_text = "Muon + AdamW" if has_muon else "AdamW only"
    if not has_muon:
        print(f"note: torch.optim.Muon is missing from PyTorch {torch.__version__} (it needs 2.9 or "
              "newer): AdamW optimizes every parameter, so the optimizer step differs from ablate's")

    runs = [("eager", None)]
    if not args.no_compile:
        runs.append(("compile", "default"))
    if args.max_autotune:
        runs.append(("autotune", "max-autotune-no-cudagraphs"))
    titles = {"eager": "PyTorch eager tok/s", "compile": "torch.compile tok/s",
              "autotune": "torch.compile max-autotune tok/s", "ablate": "ablate tok/s"}
    columns = [(key, titles[key]) for key, _ in runs]
    if with_ablate:
        columns.append(("ablate", titles["ablate"]))

    print(f"GPU {gpu}, PyTorch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"batch {cfg.batch} x {cfg.seq} = {tokens} tokens per step, bf16 autocast, {optimizer_text}, "
          f"mean of {args.steps} steps after {args.warmup} warm-up steps", flush=True)

    rows = []
    for name in args.models:
        model = build_model(name, cfg, torch.device("meta"))
        params = parameter_count(model)
        del model
        check = "" if params == ABLATE_PARAMS[name] else f"  (ablate: {ABLATE_PARAMS[name]:,} -- differs)"
        print(f"{name}: {params:,} parameters{check}", flush=True)
        row = {"model": name, "params": params, "ablate": ablate.get(name)}
        for key, mode in runs:
            label = "eager" if mode is None else f"torch.compile({mode})"
            try:
                timing = time_training(name, cfg, device, args.steps, args.warmup, mode)
            except Exception as error:  # noqa: BLE001 - reported, the other runs go on
                failures += 1
                print(f"  {label}: failed: {type(error).__name__}: {error}", file=sys.stderr)
                print(tail(traceback.format_exc(), 15), file=sys.stderr)
                row[key] = None
            else:
                row[key] = tokens / timing.step_s
                print(f"  {label:45s} {timing.step_s * 1e3:8.2f} ms/step {row[key]:12,.0f} tok/s"
                      f"   (warm-up {timing.warmup_s:.1f} s, loss {timing.loss:.3f})", flush=True)
            release_memory()
        if with_ablate:
            print(f"  {'ablate':45s} {'':16s} {format_rate(row['ablate']):>12s} tok/s", flush=True)
        rows.append(row)

    header, body = results_table(rows, columns)
    print()
    print(f"GPU: {gpu}    torch {torch.__version__}")
    print_table(header, body)
    if args.markdown:
        text = (f"GPU: {gpu}; PyTorch {torch.__version__} (CUDA {torch.version.cuda}); batch "
                f"{cfg.batch} x {cfg.seq} tokens, bf16 autocast, {optimizer_text}; PyTorch: median of "
                f"{args.steps} steps after {args.warmup} warm-up steps"
                + ("; ablate: bench_cuda BM_TrainStep, median of 3 repetitions" if with_ablate else "")
                + ".\n\n" + markdown_table(header, body) + "\n")
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"\nwrote {args.markdown}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
