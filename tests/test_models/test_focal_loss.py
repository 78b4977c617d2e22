"""The focal contrastive loss (MaMMUT) against a written-out computation, open_clip's sigmoid
loss, and itself on two processes."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

import rils_mm  # noqa: F401
from rils_mm.models.losses import FocalContrastiveLoss


def normalised(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def written_out(image, text, scale, bias, alpha, gamma):
    """One pair at a time: mean over images of the summed focal pair losses."""
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            z = scale * float(image[i] @ text[j]) + bias
            p = 1 / (1 + math.exp(-z))
            match = i == j
            p_t = p if match else 1 - p
            cross_entropy = -math.log(p_t)
            total += (alpha if match else 1 - alpha) * (1 - p_t)**gamma * cross_entropy
    return total / len(image)


def test_focal_loss_equals_the_written_out_computation():
    image, text = normalised(3, 4, seed=1), normalised(3, 4, seed=2)
    loss_fn = FocalContrastiveLoss(alpha=0.25, gamma=2.0, bias_init=-1.5)
    out = loss_fn(image, text, torch.tensor(10.0))
    expected = written_out(image, text, 10.0, -1.5, 0.25, 2.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    without_bias = FocalContrastiveLoss(learnable_bias=False)(image, text, torch.tensor(10.0))
    assert without_bias.loss.item() == pytest.approx(
        written_out(image, text, 10.0, 0.0, 0.5, 1.0), rel=1e-5)
    assert out.logits_per_image.shape == (3, 3) and out.labels.tolist() == [0, 1, 2]


def test_gamma_zero_and_even_alpha_is_half_the_sigmoid_loss():
    image, text = normalised(6, 8, seed=3), normalised(6, 8, seed=4)
    scale, bias = torch.tensor(10.0), -10.0
    loss_fn = FocalContrastiveLoss(alpha=0.5, gamma=0.0, bias_init=bias)
    ours = loss_fn(image, text, scale).loss
    reference = SigLipLoss()(image, text, scale, torch.tensor(bias))
    torch.testing.assert_close(ours, 0.5 * reference)
    ours.backward()
    assert loss_fn.logit_bias.grad is not None  # the bias learns
    with pytest.raises(ValueError, match='alpha'):
        FocalContrastiveLoss(alpha=1.5)


def _focal_two_processes(rank, world_size, out_dir):
    image, text = normalised(8, 8, seed=5), normalised(8, 8, seed=6)
    rows = slice(rank * 4, (rank + 1) * 4)
    loss_fn = FocalContrastiveLoss(alpha=0.5, gamma=1.0, bias_init=-2.0)
    local_image = image[rows].clone().requires_grad_()
    local_text = text[rows].clone().requires_grad_()
    out = loss_fn(local_image, local_text, torch.tensor(10.0))
    out.loss.backward()
    torch.save(dict(loss=out.loss.detach(), image=local_image.grad, text=local_text.grad,
                    bias=loss_fn.logit_bias.grad, labels=out.labels),
               f'{out_dir}/{rank}.pt')


def test_two_processes_equal_one_process(run_distributed, tmp_path):
    run_distributed(_focal_two_processes, 2, str(tmp_path))
    per_rank = [torch.load(tmp_path / f'{rank}.pt') for rank in range(2)]
    image = normalised(8, 8, seed=5).requires_grad_()
    text = normalised(8, 8, seed=6).requires_grad_()
    loss_fn = FocalContrastiveLoss(alpha=0.5, gamma=1.0, bias_init=-2.0)
    whole = loss_fn(image, text, torch.tensor(10.0)).loss
    whole.backward()
    # DDP averages the ranks' gradients and the logged losses average the same way.
    torch.testing.assert_close(sum(r['loss'] for r in per_rank) / 2, whole.detach())
    torch.testing.assert_close(sum(r['bias'] for r in per_rank) / 2, loss_fn.logit_bias.grad)
    for rank, result in enumerate(per_rank):
        rows = slice(rank * 4, (rank + 1) * 4)
        assert result['labels'].tolist() == list(range(rank * 4, rank * 4 + 4))
        torch.testing.assert_close(result['image'] / 2, image.grad[rows])
        torch.testing.assert_close(result['text'] / 2, text.grad[rows])
