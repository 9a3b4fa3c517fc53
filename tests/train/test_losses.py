"""The MLFS losses as pure functions."""

from __future__ import annotations

import pytest
import torch

from slicer.train.losses import fd_loss, feature_layer_pairs, fixed_projection, gradient_scale, kd_loss


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    t = torch.randn(4, 3)
    assert kd_loss(t.clone(), t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.randn(4, 3), t, temperature=2.0).item() > 0


def test_kd_masks_padded_positions():
    teacher, student = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    changed = student.clone()
    changed[1, 3:] += 100.0  # only padded positions differ
    assert torch.equal(kd_loss(student, teacher, 1.0, mask), kd_loss(changed, teacher, 1.0, mask))


def test_kd_does_not_backpropagate_into_the_teacher():
    teacher = torch.randn(3, 4, requires_grad=True)
    student = torch.randn(3, 4, requires_grad=True)
    kd_loss(student, teacher, 1.0).backward()
    assert teacher.grad is None and student.grad is not None


def test_fixed_projection_has_orthonormal_rows():
    u = fixed_projection(16, 48, seed=3)
    assert u.shape == (16, 48)
    assert torch.allclose(u @ u.T, torch.eye(16), atol=1e-5)
    assert torch.equal(u, fixed_projection(16, 48, seed=3))


def test_fd_cannot_collapse_through_its_projection():
    """FD compares U h_j with U h_1. With U fixed and orthonormal, FD is zero only if the projected features agree;
    shrinking U (which a trainable U applied to both sides could do) is impossible because U is not a parameter."""
    u = fixed_projection(8, 32, seed=0)
    h_teacher = [torch.randn(2, 5, 32) for _ in range(3)]
    h_student = [torch.randn(2, 5, 32) for _ in range(3)]
    pairs = [(1, 1), (2, 2)]
    assert fd_loss(h_teacher, h_teacher, pairs, u, beta=0.1).item() == pytest.approx(0.0, abs=1e-6)
    fd = fd_loss(h_student, h_teacher, pairs, u, beta=0.1)
    assert fd.item() > 0.01
    # What a collapsing projection would do: scaling U by c scales FD by c^2, towards 0.
    assert fd_loss(h_student, h_teacher, pairs, u * 0.01, beta=0.1).item() == pytest.approx(fd.item() * 1e-4, rel=1e-3)


def test_fd_slices_the_projection_for_narrower_subnets():
    u = fixed_projection(8, 32, seed=0)
    teacher = [torch.zeros(1, 3, 32), torch.randn(1, 3, 32)]
    student = [torch.zeros(1, 3, 20), teacher[1][..., :20].clone()]
    # The student's features are the teacher's first 20 channels: equal to U[:, :20] h_1[:20], not to U h_1.
    expected = ((teacher[1][..., 20:] @ u[:, 20:].T).pow(2).mean(-1)).mean() * 0.5
    assert fd_loss(student, teacher, [(1, 1)], u, beta=0.5).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("subnet", "anchors", "pairs"),
    [
        ((0, 1, 2, 3, 4, 5), (1, 3, 5), [(2, 2), (4, 4), (6, 6)]),  # maxnet depth: same layers
        ((1, 3, 5), (1, 3, 5), [(1, 2), (2, 4), (3, 6)]),  # the minnet itself
        ((1, 2, 4, 5), (1, 3, 5), [(1, 2), (2, 4), (4, 6)]),  # layer 3 dropped: compare after layer 2
        ((4, 5), (1, 3, 5), [(2, 6)]),  # nothing kept before layer 4: no pair for anchors 1 and 3
    ],
)
def test_feature_layer_pairs(subnet, anchors, pairs):
    assert feature_layer_pairs(subnet, anchors) == pairs


def test_gradient_scale():
    assert gradient_scale(100, 25, 2.0) == 16.0
    assert gradient_scale(100, 25, 0.0) == 1.0
    assert gradient_scale(100, 100, 2.0) == 1.0
