"""A gated MLP (SwiGLU: Llama, Qwen2, Mistral, SmolLM) that keeps less for its backward pass.

    y = W_down (silu(W_gate x) * W_up x)

PyTorch's autograd keeps, per token of every layer, x, g = W_gate x, silu(g), u = W_up x and
h = silu(g) * u: five tensors, four of the MLP's width. `LeanSwiGLU` keeps x, g and u and recomputes
silu(g) and h in the backward pass, which costs two elementwise passes over [tokens, width] next to
six matmuls of the same size. For SmolLM2-135M (width 1536, model 576) that is 3072 of the ~11k
floats a decoder layer keeps per token; the gradients are the same up to float rounding
(`tests/train/test_lean_mlp.py`).

It applies to MLPs whose three projections are plain `nn.Linear` without bias and whose activation
is SiLU; any other MLP (a LoRA-wrapped projection, a bias, GELU) keeps its own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class LeanSwiGLU(torch.autograd.Function):
    """y = (silu(x W_g^T) * (x W_u^T)) W_d^T, saving x, x W_g^T and x W_u^T for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
        gate, up = x @ w_gate.t(), x @ w_up.t()
        ctx.save_for_backward(x, gate, up, w_gate, w_up, w_down)
        device = x.device.type  # the backward runs under the forward's autocast, as torch.amp.custom_bwd does
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return (nn.functional.silu(gate) * up) @ w_down.t()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return LeanSwiGLU._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx: Any, grad_out: torch.Tensor):
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        act = gate * sig  # silu(gate), recomputed
        grad_h = grad_out @ w_down
        grad_up = grad_h * act
        # d silu(g)/dg = sig * (1 + g * (1 - sig))
        grad_gate = grad_h.mul_(up).mul_(sig * (1 + gate * (1 - sig)))
        flat = x.reshape(-1, x.shape[-1])
        grads = [None, None, None, None]
        if ctx.needs_input_grad[0]:
            grads[0] = grad_gate @ w_gate + grad_up @ w_up
        if ctx.needs_input_grad[1]:
            grads[1] = grad_gate.reshape(-1, grad_gate.shape[-1]).t() @ flat
        if ctx.needs_input_grad[2]:
            grads[2] = grad_up.reshape(-1, grad_up.shape[-1]).t() @ flat
        if ctx.needs_input_grad[3]:
            hidden = (act * up).reshape(-1, up.shape[-1])
            grads[3] = grad_out.reshape(-1, grad_out.shape[-1]).t() @ hidden
        return tuple(grads)


def _lean_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # evaluation: nothing is kept, the module's own forward is as lean
        return self.__class__.forward(self, x)
    return LeanSwiGLU.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


def _is_silu(act: Any) -> bool:
    from transformers.activations import SiLUActivation

    return isinstance(act, (nn.SiLU, SiLUActivation))


def is_swiglu(module: nn.Module) -> bool:
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return all(type(p) is nn.Linear and p.bias is None for p in projections) and _is_silu(getattr(module, "act_fn", None))


def use_lean_mlp(model: nn.Module) -> int:
    """Give every SwiGLU MLP of `model` the lean backward; returns how many MLPs took it."""
    count = 0
    for module in model.modules():
        if is_swiglu(module):
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count
