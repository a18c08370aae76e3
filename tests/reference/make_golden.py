#!/usr/bin/env python3
"""Golden files for ablate's reference-parity tests (tests/unit/test_reference_parity.cpp).

Builds small reference modules with fixed seeds -- Hugging Face transformers' DeepseekV3Attention
(q_lora_rank 0 and > 0, qk_nope_head_dim 0 and > 0), DeepseekV3MLP, DeepseekV3MoE with its top-k
router, Glm4MoeMoE with its shared expert and DeepseekV3RMSNorm, plus plain-PyTorch versions of
the seed's baseline MoE, standard attention and skeleton RMSNorm -- runs forward and backward on
random inputs and writes, per module, one safetensors file into tests/data/golden/:

  input, grad_output          [batch, seq, hidden]  the module input and the upstream gradient
  output, grad_input          [batch, seq, hidden]  what the module returned, d loss / d input
  <prefix>.<name>             every parameter (and buffer) under ablate's Hugging Face name,
                              e.g. self_attn.q_a_proj.weight, mlp.experts.3.up_proj.weight
  grad.<prefix>.<name>        d loss / d parameter, for every parameter
  routing.indices             I64 [tokens, top_k]: the experts each token chose, ascending (MoE)
  aux_loss                    [1]: the auxiliary loss, where the module has one

with loss = sum(output * grad_output) (+ aux_loss).  Inputs and weights are float32 values
(stored as F32 exactly); the reference modules run in float64 by default (--dtype), except
where transformers itself computes in float32 whatever the module's dtype (RMSNorm, the router,
the eager attention softmax, RoPE's cos and sin), and their results are stored as F32.  The metadata (strings, as safetensors requires) holds:

  golden.case           the file's name without extension
  golden.module         the reference class, e.g. transformers...DeepseekV3Attention
  golden.block          the ablate block to compare: mla, mla-noncausal, mha, gated-mlp, rms,
                        moe-glm4, moe-seed
  golden.prefix         the block's parameter-name prefix (self_attn, mlp, input_layernorm)
  golden.config         JSON: the ablate ModelConfig fields of the block (HF-style names)
  golden.run            JSON: batch, seq, training, n_routed_experts, num_experts_per_tok, loss
  golden.hf_config      JSON: the transformers config the module was built from (where one was)
  golden.reference_dtype, golden.seed, golden.input_draws, golden.generator
  golden.torch_version, golden.transformers_version, golden.safetensors_version,
  golden.python_version

Needs PyTorch (2.x; written against 2.11) and transformers 5.x (the experts of 5.x MoE layers
are fused into experts.gate_up_proj / experts.down_proj; the script splits them into the
per-expert names of the hub checkpoints, which is what ablate uses; the older per-expert
module lists are read as they are).  Runs on the CPU, no GPU needed:

  python3 tests/reference/make_golden.py                 # all cases into tests/data/golden/
  python3 tests/reference/make_golden.py --only seed_moe --out /tmp/golden
  python3 tests/reference/make_golden.py --list
"""

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import transformers
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as deepseek_v3
    from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    from transformers.models.glm4_moe import modeling_glm4_moe as glm4_moe
    from transformers.models.glm4_moe.configuration_glm4_moe import Glm4MoeConfig
except ImportError as error:  # pragma: no cover - a setup problem, reported plainly
    sys.exit(f"make_golden.py: transformers with DeepSeek-V3 and GLM-4 MoE models is needed ({error})")

import safetensors
from safetensors.torch import save_file

# Routing is piecewise constant: the float32 block under test must choose the same experts as
# the reference, so every top-k decision (and group choice) is kept at least this far from a
# tie; inputs are redrawn until it is.
ROUTING_MARGIN = 1e-3
MAX_INPUT_DRAWS = 200

# Shapes shared by the cases: small enough for tens of KB per file, large enough that every
# head, group and expert does something.
BATCH, SEQ = 2, 7


# ---------------------------------------------------------------------------------------------
# Random numbers: uniform draws from a seeded generator, rounded to float32 so that the C++ test
# (float32) and the reference see the very same inputs and weights.

class Draw:
    def __init__(self, seed, dtype):
        self.generator = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def uniform(self, shape, low, high):
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        return (low + (high - low) * u).to(torch.float32).to(self.dtype)


def fill_parameters(module, draw):
    """Moves `module` to the reference dtype, then gives every parameter fixed random values:
    matrices uniform(+-1/sqrt(fan_in)) (PyTorch's default scale, fan_in = the last dimension,
    also for the fused 3-D expert tensors), biases uniform(+-0.2), norm weights
    uniform(0.8, 1.2) so that their gradients and scaling are exercised rather than hidden by
    ones.  Returns the module."""
    module.to(draw.dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                bound = 1.0 / math.sqrt(p.shape[-1])
                p.copy_(draw.uniform(tuple(p.shape), -bound, bound))
            elif name.endswith("bias"):
                p.copy_(draw.uniform(tuple(p.shape), -0.2, 0.2))
            else:
                p.copy_(draw.uniform(tuple(p.shape), 0.8, 1.2))
    return module


def set_eager(config):
    """Eager attention and eager experts: the plain loops, no fused kernels.  A switch the
    installed transformers has must take; one it lacks (older releases) is left alone."""
    for attribute in ("_attn_implementation", "_experts_implementation"):
        try:
            setattr(config, attribute, "eager")
        except (AttributeError, ValueError, TypeError):
            pass  # an older transformers without that switch
        if attribute == "_attn_implementation" or hasattr(config, attribute):
            value = getattr(config, attribute, None)
            assert value == "eager", f"config.{attribute} is {value!r}, not 'eager'"


def config_json(config):
    """The transformers config as JSON (for the record; the C++ test reads golden.config)."""
    try:
        d = config.to_dict()
    except Exception:  # noqa: BLE001 - a record only
        d = dict(vars(config))
    return json.dumps(d, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# Exporting parameters and gradients under ablate's names.

def export_parameters(module, prefix):
    """(name, value, grad) for every parameter and buffer, under `prefix` and ablate's names.

    transformers 5.x keeps the routed experts of an MoE fused: experts.gate_up_proj [E, 2I, H]
    (gate rows first: forward takes gate, up = linear(x, gate_up_proj[e]).chunk(2)) and
    experts.down_proj [E, H, I].  They are split into experts.<e>.{gate,up,down}_proj.weight,
    the names of the hub checkpoints and of ablate.  Buffers (e_score_correction_bias) have
    no gradient (grad None)."""
    out = []
    # Fail loudly, rather than write wrong names, if the fused layout is not the one above.
    for sub in module.modules():
        assert not getattr(sub, "is_transposed", False), "transposed fused experts"
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    for name, shape in shapes.items():
        if name.endswith("experts.gate_up_proj"):
            down = shapes[name[: -len("gate_up_proj")] + "down_proj"]
            assert len(shape) == 3 and shape[1] == 2 * down[2] and shape[2] == down[1], \
                f"{name} is {shape} with down_proj {down}: not [E, 2I, H] and [E, H, I]"
    for name, p in module.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            width = p.shape[1] // 2
            for e in range(p.shape[0]):
                out.append((f"{prefix}.{base}{e}.gate_proj.weight", p[e, :width], grad[e, :width]))
                out.append((f"{prefix}.{base}{e}.up_proj.weight", p[e, width:], grad[e, width:]))
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(p.shape[0]):
                out.append((f"{prefix}.{base}{e}.down_proj.weight", p[e], grad[e]))
        else:
            out.append((f"{prefix}.{name}", p, grad))
    for name, b in module.named_buffers():
        if name.endswith("e_score_correction_bias"):
            out.append((f"{prefix}.{name}", b, None))
    return out


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def write_golden(path, case, tensors, metadata):
    """Writes atomically: a temporary file in the same folder, renamed over the target."""
    meta = {
        "format": "pt",
        "golden.case": case,
        "golden.generator": "tests/reference/make_golden.py",
        "golden.torch_version": str(torch.__version__),
        "golden.transformers_version": str(transformers.__version__),
        "golden.safetensors_version": str(getattr(safetensors, "__version__", "unknown")),
        "golden.python_version": platform.python_version(),
    }
    meta.update(metadata)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Forward, backward and the file of one module.

def run_case(name, module, prefix, block, config, forward, draw, dtype, *, training=False,
             routing=None, hf_config=None, module_name=None, experts=0, top_k=0,
             margin=None, seed=0, out_dir=None):
    """`forward(x) -> (y, aux or None)`; `margin(x) -> float` is the routing margin of input x
    (None for modules without routing); `routing(x) -> LongTensor [tokens, top_k]`."""
    module.to(dtype)
    module.train(training)
    hidden = config["hidden_size"]
    draws = 0
    while True:
        draws += 1
        x = draw.uniform((BATCH, SEQ, hidden), -1.0, 1.0)
        if margin is None:
            break
        with torch.no_grad():
            m = margin(x)
        if m >= ROUTING_MARGIN:
            break
        if draws >= MAX_INPUT_DRAWS:
            raise RuntimeError(f"{name}: no input with a routing margin of {ROUTING_MARGIN} "
                               f"in {MAX_INPUT_DRAWS} draws")
    grad_output = draw.uniform((BATCH, SEQ, hidden), -1.0, 1.0)

    module.zero_grad(set_to_none=True)
    x.requires_grad_(True)
    y, aux = forward(x)
    loss = (y * grad_output).sum()
    if aux is not None:
        loss = loss + aux
    loss.backward()

    tensors = {
        "input": f32(x),
        "grad_output": f32(grad_output),
        "output": f32(y),
        "grad_input": f32(x.grad),
    }
    for pname, value, grad in export_parameters(module, prefix):
        tensors[pname] = f32(value)
        if grad is not None:
            tensors["grad." + pname] = f32(grad)
    if routing is not None:
        with torch.no_grad():
            idx = routing(x.detach())
        tensors["routing.indices"] = idx.to(torch.int64).sort(dim=-1).values.contiguous()
    if aux is not None:
        tensors["aux_loss"] = f32(aux.reshape(1))

    run = {
        "batch": BATCH,
        "seq": SEQ,
        "training": training,
        "n_routed_experts": experts,
        "num_experts_per_tok": top_k,
        "loss": "sum(output * grad_output)" + (" + aux_loss" if aux is not None else ""),
    }
    metadata = {
        "golden.module": module_name or type(module).__module__ + "." + type(module).__qualname__,
        "golden.block": block,
        "golden.prefix": prefix,
        "golden.config": json.dumps(config, sort_keys=True),
        "golden.run": json.dumps(run, sort_keys=True),
        "golden.reference_dtype": str(dtype).replace("torch.", ""),
        "golden.seed": str(seed),
        "golden.input_draws": str(draws),
    }
    if hf_config is not None:
        metadata["golden.hf_config"] = config_json(hf_config)
    path = out_dir / f"{name}.safetensors"
    write_golden(path, name, tensors, metadata)
    return path


def topk_margin(scores, k):
    """Smallest gap over rows between the k-th and (k+1)-th largest entries."""
    top = scores.topk(k + 1, dim=-1).values
    return float((top[:, k - 1] - top[:, k]).min())


# ---------------------------------------------------------------------------------------------
# DeepSeek-V3 multi-head latent attention.

def causal_mask(dtype):
    """The additive mask eager attention expects: 0 on and below the diagonal, the dtype's
    lowest value above it (as transformers' create_causal_mask writes it)."""
    upper = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
    mask = torch.zeros(SEQ, SEQ, dtype=dtype).masked_fill(upper, torch.finfo(dtype).min)
    return mask[None, None].expand(BATCH, 1, SEQ, SEQ)


def deepseek_config(**overrides):
    base = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=12,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        first_k_dense_replace=0,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=0,
        v_head_dim=12,
        hidden_act="silu",
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        # DeepSeek's own layout: q_pe / k_pe are de-interleaved before the rotate-half rotation
        # (transformers' default for DeepSeek-V3, and ablate's RopeLayout::DeepSeek).
        rope_interleave=True,
        attention_bias=False,
        attention_dropout=0.0,
    )
    base.update(overrides)
    config = DeepseekV3Config(**base)
    set_eager(config)
    # transformers 5.x moves rope_theta into config.rope_parameters; plain RoPE either way.
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        rope.setdefault("rope_type", "default")
        rope.setdefault("rope_theta", base["rope_theta"])
        assert rope["rope_type"] == "default" and rope["rope_theta"] == base["rope_theta"], rope
    assert getattr(config, "rope_interleave", True), "rope_interleave must be on"
    assert (config.q_lora_rank or 0) == (base["q_lora_rank"] or 0)
    assert config.qk_nope_head_dim == base["qk_nope_head_dim"]
    return config


def latent_norm_eps(attention):
    """The eps of kv_a_layernorm, which q_a_layernorm (where there is one) must share."""
    eps = attention.kv_a_layernorm.variance_epsilon
    q_norm = getattr(attention, "q_a_layernorm", None)
    if q_norm is not None:
        assert q_norm.variance_epsilon == eps, (q_norm.variance_epsilon, eps)
    return float(eps)


def mla_case(name, *, q_lora_rank, nope, bias, causal=True, seed, dtype, out_dir):
    config = deepseek_config(q_lora_rank=q_lora_rank or None, qk_nope_head_dim=nope,
                             attention_bias=bias)
    draw = Draw(seed, dtype)
    attention = deepseek_v3.DeepseekV3Attention(config, layer_idx=0)
    fill_parameters(attention, draw)
    rotary = deepseek_v3.DeepseekV3RotaryEmbedding(config=config)
    if causal:
        mask = causal_mask(dtype)
    else:
        # The seed's wrapper passed an all-ones mask that eager attention *adds* to the scores:
        # a constant shift that softmax ignores, i.e. no mask at all (flaw 1 in examples/RESULTS.md).
        mask = torch.ones(BATCH, 1, SEQ, SEQ, dtype=dtype)

    def forward(x):
        position_ids = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
        cos, sin = rotary(x, position_ids)
        y, _ = attention(hidden_states=x, position_embeddings=(cos, sin), attention_mask=mask)
        return y, None

    ablate_config = {
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "q_lora_rank": q_lora_rank,
        "kv_lora_rank": config.kv_lora_rank,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "v_head_dim": config.v_head_dim,
        "attention_bias": bias,
        "rope_theta": 10000.0,
        # The latent norms' eps as the module has it (transformers releases build
        # q_a_layernorm / kv_a_layernorm with config.rms_norm_eps or with the norm's default
        # 1e-6); ablate keeps it apart from the skeleton's (mla_rms_norm_eps).
        "mla_rms_norm_eps": latent_norm_eps(attention),
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "max_position_embeddings": SEQ,
    }
    return run_case(name, attention, "self_attn", "mla" if causal else "mla-noncausal",
                    ablate_config, forward, draw, dtype, hf_config=config, seed=seed,
                    out_dir=out_dir)


# ---------------------------------------------------------------------------------------------
# Feed-forward blocks.

def deepseek_mlp_case(name, *, seed, dtype, out_dir):
    config = deepseek_config()
    draw = Draw(seed, dtype)
    mlp = deepseek_v3.DeepseekV3MLP(config, intermediate_size=config.intermediate_size)
    fill_parameters(mlp, draw)
    ablate_config = {"hidden_size": config.hidden_size,
                     "intermediate_size": config.intermediate_size}
    return run_case(name, mlp, "mlp", "gated-mlp", ablate_config, lambda x: (mlp(x), None), draw,
                    dtype, hf_config=config, seed=seed, out_dir=out_dir)


def sigmoid_router_margin(weight, bias, n_group, topk_group, top_k):
    """Margin of DeepSeek-V3 / GLM4 routing (computed in float64 from the float32 values both
    sides use): between kept and dropped groups, and between the k-th and (k+1)-th expert of
    the kept groups."""
    def margin(x):
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        scores = torch.sigmoid(flat @ weight.detach().to(torch.float64).t())
        choice = scores + bias.detach().to(torch.float64)
        experts = choice.shape[-1]
        groups = choice.view(-1, n_group, experts // n_group).topk(2, dim=-1).values.sum(-1)
        m = topk_margin(groups, topk_group) if topk_group < n_group else math.inf
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(topk_group, dim=-1).indices, 1.0)
        keep = keep.unsqueeze(-1).expand(-1, n_group, experts // n_group).reshape(-1, experts)
        masked = choice.masked_fill(keep == 0, -math.inf)
        return min(m, topk_margin(masked, top_k))
    return margin


def sigmoid_moe_case(name, moe, config, draw, dtype, *, seed, out_dir):
    fill_parameters(moe, draw)
    with torch.no_grad():
        # e_score_correction_bias is a buffer (zeros at initialisation).  Non-zero here, so that
        # the test sees it choose experts without entering the weights; non-negative, because
        # transformers 4.x masked dropped groups with 0 (5.x and ablate with -inf), and the two
        # choose alike only while sigmoid + bias >= 0: files from either version hold.
        bias = moe.gate.e_score_correction_bias
        bias.copy_(draw.uniform(tuple(bias.shape), 0.0, 0.05).to(bias.dtype))

    def forward(x):
        y = moe(x)
        return (y[0] if isinstance(y, tuple) else y), None  # some releases add router logits

    def routing(x):
        flat = x.reshape(-1, x.shape[-1])
        out = moe.gate(flat)
        if isinstance(out, tuple):
            # transformers 4.x: (indices, weights); later 5.x releases: (logits, weights,
            # indices).  The indices are the one integer tensor either way.
            return next(t for t in out if not t.is_floating_point())
        return moe.route_tokens_to_experts(out)[0]  # 5.0: the router returns logits only

    ablate_config = {
        "hidden_size": config.hidden_size,
        "moe_intermediate_size": config.moe_intermediate_size,
        "n_shared_experts": config.n_shared_experts,
        "n_group": config.n_group,
        "topk_group": config.topk_group,
        "norm_topk_prob": bool(config.norm_topk_prob),
        "routed_scaling_factor": float(config.routed_scaling_factor),
        "router_bias_update_rate": 0.0,
        "hidden_dropout": 0.0,
    }
    margin = sigmoid_router_margin(moe.gate.weight, moe.gate.e_score_correction_bias,
                                   config.n_group, config.topk_group, config.num_experts_per_tok)
    return run_case(name, moe, "mlp", "moe-glm4", ablate_config, forward, draw, dtype,
                    routing=routing, hf_config=config, experts=config.n_routed_experts,
                    top_k=config.num_experts_per_tok, margin=margin, seed=seed, out_dir=out_dir)


def deepseek_moe_case(name, *, seed, dtype, out_dir):
    config = deepseek_config(hidden_size=16, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    draw = Draw(seed, dtype)
    return sigmoid_moe_case(name, deepseek_v3.DeepseekV3MoE(config), config, draw, dtype,
                            seed=seed, out_dir=out_dir)


def glm4_moe_case(name, *, seed, dtype, out_dir):
    config = Glm4MoeConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=48,
        moe_intermediate_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        n_shared_experts=2,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=1.5,
        norm_topk_prob=True,
        first_k_dense_replace=0,
        hidden_act="silu",
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    set_eager(config)
    draw = Draw(seed, dtype)
    return sigmoid_moe_case(name, glm4_moe.Glm4MoeMoE(config), config, draw, dtype, seed=seed,
                            out_dir=out_dir)


# The seed's baseline MoE in plain PyTorch, as ablate's SeedMoE computes it (the seed's code):
# logits = gate(x) (+ noise in training); probs = softmax(logits) over all experts; top-k by
# logits; combine weights = softmax over the k selected logits; expert = down(dropout(silu(up)));
# in training aux = coef * E * sum_e f_e * P_e with f_e the (constant) fraction of the routed
# slots that went to e and P_e the mean of probs[:, e].  The golden runs in training mode (so
# the aux loss is on) with noise std 0 and dropout 0: PyTorch's random streams cannot be
# reproduced in C++.

class SeedExpert(nn.Module):
    def __init__(self, hidden, width, dropout):
        super().__init__()
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.down_proj(self.dropout(F.silu(self.up_proj(x))))


class SeedMoE(nn.Module):
    def __init__(self, hidden, width, experts, top_k, aux_coef, noise_std=0.0, dropout=0.0):
        super().__init__()
        self.top_k = top_k
        self.aux_coef = aux_coef
        self.noise_std = noise_std
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(SeedExpert(hidden, width, dropout) for _ in range(experts))

    def route(self, flat):
        logits = self.gate(flat)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        top_logits, indices = logits.topk(self.top_k, dim=-1)
        return logits, top_logits, indices

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        logits, top_logits, indices = self.route(flat)
        probs = F.softmax(logits, dim=-1)
        weights = F.softmax(top_logits, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tokens, slots = torch.where(indices == e)
            if tokens.numel() > 0:
                out = out.index_add(0, tokens, expert(flat[tokens]) * weights[tokens, slots, None])
        aux = None
        if self.training and self.aux_coef != 0:
            experts = len(self.experts)
            fraction = F.one_hot(indices, experts).sum(dim=(0, 1)).to(flat.dtype) / indices.numel()
            aux = self.aux_coef * experts * (fraction * probs.mean(dim=0)).sum()
        return out.view_as(x), aux


def seed_moe_case(name, *, seed, dtype, out_dir):
    hidden, width, experts, top_k, coef = 16, 24, 8, 2, 0.01
    draw = Draw(seed, dtype)
    moe = SeedMoE(hidden, width, experts, top_k, coef)
    fill_parameters(moe, draw)

    def margin(x):
        flat = x.reshape(-1, hidden).to(torch.float64)
        return topk_margin(flat @ moe.gate.weight.detach().to(torch.float64).t(), top_k)

    def routing(x):
        return moe.route(x.reshape(-1, hidden))[2]

    ablate_config = {
        "hidden_size": hidden,
        "moe_intermediate_size": width,
        "router_aux_loss_coef": coef,
        "router_noise_std": 0.0,
        "hidden_dropout": 0.0,
    }
    return run_case(name, moe, "mlp", "moe-seed", ablate_config, moe, draw, dtype, training=True,
                    routing=routing, module_name="plain PyTorch: the seed's baseline MoE",
                    experts=experts, top_k=top_k, margin=margin, seed=seed, out_dir=out_dir)


# ---------------------------------------------------------------------------------------------
# The seed's standard attention in plain PyTorch, as ablate's MHA computes it (the seed's code):
# fused qkv = x Wqkv^T (no bias) split into q, k, v of width d, each [heads, head_dim] with the
# heads side by side; RoPE (base 10000) on interleaved pairs (2i, 2i+1) of every q and k head,
# pair i turning by position * theta^(-2i / head_dim); causal softmax(q k^T / sqrt(head_dim)) v;
# o_proj (no bias).

def rope_interleaved(t, theta):
    head_dim = t.shape[-1]
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    angle = torch.arange(t.shape[-2], dtype=torch.float64)[:, None] * theta ** (-2.0 * i / head_dim)
    cos, sin = angle.cos().to(t.dtype), angle.sin().to(t.dtype)
    a, b = t[..., 0::2], t[..., 1::2]
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


class SeedAttention(nn.Module):
    def __init__(self, hidden, heads, theta=10000.0, causal=True):
        super().__init__()
        self.heads, self.theta, self.causal = heads, theta, causal
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        batch, seq, hidden = x.shape
        head_dim = hidden // self.heads
        q, k, v = (t.view(batch, seq, self.heads, head_dim).transpose(1, 2)
                   for t in self.qkv_proj(x).split(hidden, dim=-1))
        q, k = rope_interleaved(q, self.theta), rope_interleaved(k, self.theta)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if self.causal:
            upper = torch.ones(seq, seq, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(upper, -math.inf)
        out = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
        return self.o_proj(out)


def seed_attention_case(name, *, seed, dtype, out_dir):
    hidden, heads = 32, 4
    draw = Draw(seed, dtype)
    attention = SeedAttention(hidden, heads)
    fill_parameters(attention, draw)
    ablate_config = {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "max_position_embeddings": SEQ,
    }
    return run_case(name, attention, "self_attn", "mha", ablate_config,
                    lambda x: (attention(x), None), draw, dtype,
                    module_name="plain PyTorch: the seed's standard attention", seed=seed,
                    out_dir=out_dir)


# ---------------------------------------------------------------------------------------------
# RMSNorm: DeepSeek's (eps 1e-6, computed in float32 inside) and the skeleton's torch.nn.RMSNorm
# (eps = float32 machine epsilon, PyTorch's default for float32 inputs; given explicitly so a
# float64 reference keeps it).

def rms_norm_case(name, *, seed, dtype, out_dir):
    hidden, eps = 32, 1e-6
    draw = Draw(seed, dtype)
    norm = deepseek_v3.DeepseekV3RMSNorm(hidden, eps=eps)
    fill_parameters(norm, draw)
    ablate_config = {"hidden_size": hidden, "rms_norm_eps": eps}
    return run_case(name, norm, "input_layernorm", "rms", ablate_config, lambda x: (norm(x), None),
                    draw, dtype, seed=seed, out_dir=out_dir)


def skeleton_rms_norm_case(name, *, seed, dtype, out_dir):
    hidden, eps = 32, torch.finfo(torch.float32).eps
    draw = Draw(seed, dtype)
    norm = nn.RMSNorm(hidden, eps=eps)
    fill_parameters(norm, draw)
    ablate_config = {"hidden_size": hidden, "rms_norm_eps": eps}
    return run_case(name, norm, "norm", "rms", ablate_config, lambda x: (norm(x), None), draw,
                    dtype, seed=seed, out_dir=out_dir)


# ---------------------------------------------------------------------------------------------

CASES = {
    # DeepseekV3Attention: plain q_proj / low-rank q, with and without non-rotary head dims.
    "mla_q0_nope0": lambda **kw: mla_case("mla_q0_nope0", q_lora_rank=0, nope=0, bias=False, **kw),
    "mla_q0_nope8": lambda **kw: mla_case("mla_q0_nope8", q_lora_rank=0, nope=8, bias=True, **kw),
    # Experiment 1's shape: low-rank q, the whole q/k head rotary, biases.
    "mla_q16_nope0": lambda **kw: mla_case("mla_q16_nope0", q_lora_rank=16, nope=0, bias=True, **kw),
    "mla_q16_nope8": lambda **kw: mla_case("mla_q16_nope8", q_lora_rank=16, nope=8, bias=False, **kw),
    # The seed protocol's unmasked wrapper around it (NonCausalMLA).
    "mla_seed_noncausal": lambda **kw: mla_case("mla_seed_noncausal", q_lora_rank=16, nope=0,
                                                bias=True, causal=False, **kw),
    "deepseek_mlp": lambda **kw: deepseek_mlp_case("deepseek_mlp", **kw),
    "deepseek_moe": lambda **kw: deepseek_moe_case("deepseek_moe", **kw),
    "glm4_moe": lambda **kw: glm4_moe_case("glm4_moe", **kw),
    "rms_norm": lambda **kw: rms_norm_case("rms_norm", **kw),
    "seed_moe": lambda **kw: seed_moe_case("seed_moe", **kw),
    "seed_attention": lambda **kw: seed_attention_case("seed_attention", **kw),
    "seed_rms_norm": lambda **kw: skeleton_rms_norm_case("seed_rms_norm", **kw),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parent.parent / "data" / "golden"
    parser.add_argument("--out", type=Path, default=default_out,
                        help="output folder (default: tests/data/golden next to this script)")
    parser.add_argument("--only", action="append", choices=sorted(CASES), metavar="CASE",
                        help="write only this case (repeatable)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype the reference runs in (inputs and weights are float32 "
                             "values either way)")
    parser.add_argument("--seed", type=int, default=20240601, help="base seed")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()

    if args.list:
        print("\n".join(CASES))
        return 0
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    torch.manual_seed(args.seed)  # nothing should draw from it; fixed all the same
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"reference dtype {args.dtype}")
    names = args.only or list(CASES)
    for offset, name in enumerate(CASES):
        if name not in names:
            continue
        path = CASES[name](seed=args.seed + 1000 * offset, dtype=dtype, out_dir=args.out)
        print(f"  {path.name:28s} {path.stat().st_size / 1024:7.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
