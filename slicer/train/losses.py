"""MLFS losses as pure functions (Algorithm 1 of the paper).

For subnet j:  (1 - alpha) * task + alpha * (KD(z_j, z_1) + FD(h_j, h_1)),  alpha = 0 for the maxnet,
and the subnet's loss is weighted by (n_1 / n_j) ** gamma (gradient scaling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..nn.model import ModelOutput


def classification_loss(out: ModelOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out.logits.float(), batch["labels"])


def causal_lm_loss(out: ModelOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross entropy over real (unpadded) tokens."""
    logits = out.logits[:, :-1].float()  # (B, T-1, V)
    target = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.).

    ``student``/``teacher``: (..., classes); ``mask`` (same leading shape) selects real positions.
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (...)
    if mask is not None:
        kl = kl[mask.bool()]
    return kl.mean() * t * t


def feature_layer_pairs(subnet_layers: Sequence[int], anchor_layers: Sequence[int]) -> list[tuple[int, int]]:
    """(subnet hidden-state index, maxnet hidden-state index) pairs for feature distillation.

    Anchors are the maxnet layers the smallest subnet keeps. For each anchor l, the subnet's feature is its
    output after its last kept layer <= l (g_j); hidden-state index k means "after k layers have run".
    """
    pairs = []
    for anchor in anchor_layers:
        ran = sum(1 for i in subnet_layers if i <= anchor)
        if ran:
            pairs.append((ran, anchor + 1))
    return pairs


def fd_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    projection: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_l beta * || U_j h_j^l - U_1 h_1^{g(l)} ||^2 / d_low, mean over real tokens.

    Averaging over the d_low projected dimensions keeps FD on the scale of the task and KD losses; summed,
    it outweighed them tenfold and stage 1 wrecked the maxnet (MiniLM dev accuracy 85.6% -> 48.4%).

    ``projection`` U is fixed (d_low x hidden, orthonormal rows) and never trained, so FD cannot be
    minimised by shrinking it; the subnet's U_j is U with its columns cut to the subnet's hidden size.
    """
    total = torch.zeros((), device=projection.device)
    for s, t in pairs:
        hs, ht = student_states[s].float(), teacher_states[t].detach().float()
        diff = hs @ projection[:, : hs.shape[-1]].T - ht @ projection.T  # (B, T, d_low)
        sq = diff.pow(2).mean(-1)  # (B, T)
        total = total + beta * (sq[mask.bool()] if mask is not None else sq).mean()
    return total


def fixed_projection(d_low: int, hidden: int, seed: int) -> torch.Tensor:
    """A random (d_low x hidden) matrix with orthonormal rows: a fixed, non-collapsing FD projection."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden, d_low, generator=g))  # (hidden, d_low), orthonormal columns
    return q.T.contiguous()


def gradient_scale(n_max: int, n_sub: int, gamma: float) -> float:
    """(n_1 / n_j) ** gamma: small subnets' gradients are boosted so they converge about as fast."""
    return (n_max / n_sub) ** gamma
