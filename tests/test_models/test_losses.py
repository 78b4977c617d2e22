"""The contrastive loss against open_clip's ClipLoss; the reconstruction loss against its
formula."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import rils_mm  # noqa: F401
from rils_mm.models.losses import ContrastiveLoss, LanguageSpaceReconstructionLoss


def normalised(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def test_contrastive_loss_equals_open_clip_single_process():
    image, text = normalised(6, 8, seed=1), normalised(6, 8, seed=2)
    scale = torch.tensor(1 / 0.07)
    ours_image, ours_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    ref_image, ref_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    ours = ContrastiveLoss()(ours_image, ours_text, scale)
    reference = ClipLoss()(ref_image, ref_text, scale)
    torch.testing.assert_close(ours.loss, reference)
    ours.loss.backward()
    reference.backward()
    torch.testing.assert_close(ours_image.grad, ref_image.grad)
    torch.testing.assert_close(ours_text.grad, ref_text.grad)
    assert ours.labels.tolist() == list(range(6))


def _contrastive_two_processes(rank, world_size, out_dir):
    image, text = normalised(8, 8, seed=1), normalised(8, 8, seed=2)
    rows = slice(rank * 4, (rank + 1) * 4)
    scale = torch.tensor(1 / 0.07)
    results = {}
    for name, loss_fn in (
            ('ours', ContrastiveLoss()),
            ('open_clip', ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                                   world_size=world_size)),
            ('authors', ContrastiveLoss(gather_with_grad=False))):
        local_image = image[rows].clone().requires_grad_()
        local_text = text[rows].clone().requires_grad_()
        out = loss_fn(local_image, local_text, scale)
        loss = out.loss if name != 'open_clip' else out
        loss.backward()
        results[name] = (loss.detach(), local_image.grad, local_text.grad)
    torch.save(results, f'{out_dir}/{rank}.pt')


def test_contrastive_loss_equals_open_clip_with_two_processes(run_distributed, tmp_path):
    run_distributed(_contrastive_two_processes, 2, str(tmp_path))
    per_rank = [torch.load(tmp_path / f'{rank}.pt') for rank in range(2)]
    image, text = normalised(8, 8, seed=1), normalised(8, 8, seed=2)
    image.requires_grad_()
    text.requires_grad_()
    whole = ClipLoss()(image, text, torch.tensor(1 / 0.07))
    whole.backward()
    for rank, results in enumerate(per_rank):
        rows = slice(rank * 4, (rank + 1) * 4)
        for i in range(3):
            torch.testing.assert_close(results['ours'][i], results['open_clip'][i])
        # Summed over ranks (as DDP averages the world's gradients of world_size-scaled
        # losses), the local losses give the single-process gradient on the whole batch.
        torch.testing.assert_close(results['ours'][1] / 2, image.grad[rows])
        torch.testing.assert_close(results['ours'][2] / 2, text.grad[rows])
        # The authors' no-gradient gather loses the other rank's part of the gradient.
        assert not torch.allclose(results['authors'][1] / 2, image.grad[rows])
    mean_loss = sum(r['ours'][0] for r in per_rank) / 2
    torch.testing.assert_close(mean_loss, whole.detach())


def written_out_reconstruction_loss(pred, target, text, mask, keep, t_student, t_teacher):
    """The RILS reconstruction loss (Yang et al., 2023, arXiv:2301.06958), one patch at a time."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        if not keep[b]:
            continue
        for k in range(pred.shape[1]):
            if not mask[b, k]:
                continue
            g = pred[b, k] / pred[b, k].norm()
            f = target[b, k] / target[b, k].norm()
            q = [math.exp(float(g @ z) / t_student) for z in text]
            p = [math.exp(float(f @ z) / t_teacher) for z in text]
            q = [v / sum(q) for v in q]
            p = [v / sum(p) for v in p]
            total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))
            count += 1
    return total / count if count else 0.0


def test_reconstruction_loss_matches_written_out_formula():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    text = normalised(3, 5, seed=3)
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    correct = torch.tensor([True, False, True])
    loss_fn = LanguageSpaceReconstructionLoss(loss_weight=1.0)
    loss, weights = loss_fn(pred, target, text, mask, correct)
    expected = written_out_reconstruction_loss(pred, target, text, mask, correct, 0.1, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert weights.sum().item() == 3 + 4  # masked patches of the kept samples 0 and 2

    unfiltered = LanguageSpaceReconstructionLoss(loss_weight=0.5, filter_correct=False)
    loss_all, _ = unfiltered(pred, target, text, mask)
    expected_all = written_out_reconstruction_loss(pred, target, text, mask, [1, 1, 1], 0.1,
                                                   0.04)
    assert loss_all.item() == pytest.approx(0.5 * expected_all, rel=1e-5)


def test_reconstruction_loss_teacher_has_no_gradient():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.randn(2, 3, 4, requires_grad=True)
    text = normalised(2, 4).requires_grad_()
    loss, _ = LanguageSpaceReconstructionLoss()(pred, target, text, torch.ones(2, 3),
                                               torch.tensor([True, True]))
    loss.backward()
    assert target.grad is None
    assert pred.grad.abs().sum() > 0 and text.grad.abs().sum() > 0


def test_all_filtered_batch_gives_zero_loss_without_nan():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss, weights = LanguageSpaceReconstructionLoss()(pred, torch.randn(2, 3, 4),
                                                      normalised(2, 4), torch.ones(2, 3),
                                                      torch.tensor([False, False]))
    assert loss.item() == 0.0 and weights.sum() == 0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize('key', ['student_temperature', 'teacher_temperature'])
@pytest.mark.parametrize('value', [0.0, -0.1])
def test_temperatures_must_be_positive(key, value):
    with pytest.raises(ValueError, match=key):
        LanguageSpaceReconstructionLoss(**{key: value})


def _reconstruction_inputs(batch=5, patches=7, dims=6, prototypes=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, patches, dims, generator=generator)
    target = torch.randn(batch, patches, dims, generator=generator)
    text = normalised(prototypes, dims, seed=seed + 1)
    mask = (torch.rand(batch, patches, generator=generator) < 0.6).float()
    correct = torch.rand(batch, generator=generator) < 0.7
    correct[0] = True
    return pred, target, text, mask, correct


@pytest.mark.parametrize('chunk_size', [1, 3, 4, 2048])
@pytest.mark.parametrize('filter_correct', [True, False])
def test_tiled_masked_only_loss_equals_the_dense_loss(chunk_size, filter_correct):
    """Scoring only the contributing patches, in tiles over rows and prototypes, gives the
    dense computation's loss and gradients (student features and prototypes)."""
    pred, target, text, mask, correct = _reconstruction_inputs()
    results = []
    for size in (None, chunk_size):
        inputs = [pred.clone().requires_grad_(), text.clone().requires_grad_()]
        loss_fn = LanguageSpaceReconstructionLoss(filter_correct=filter_correct,
                                                  chunk_size=size)
        loss, weights = loss_fn(inputs[0], target, inputs[1], mask, correct)
        loss.backward()
        results.append((loss.detach(), weights, inputs[0].grad, inputs[1].grad))
    dense, tiled = results
    assert dense[0] > 0
    for reference, value in zip(dense, tiled):
        torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-7)
    # Rows that do not contribute get exactly no gradient.
    assert (tiled[2][tiled[1] == 0] == 0).all()


def test_tiled_loss_holds_no_tensor_larger_than_a_tile():
    """Every tensor made in forward and backward is at most a tile, or an input-sized one
    (N x D rows, P x D prototypes, their gradients): none is N x P, as the dense loss's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(tensor, torch.Tensor):
                    type(self).largest = max(type(self).largest, tensor.numel())
            return out

    rows, prototypes, dims, tile = 300, 400, 8, 16
    student = normalised(rows, dims, seed=1).requires_grad_()
    teacher = normalised(rows, dims, seed=2)
    protos = normalised(prototypes, dims, seed=3).requires_grad_()
    from rils_mm.models.losses.language_reconstruction import tiled_language_kl
    with LargestTensor():
        tiled_language_kl(student, teacher, protos, 0.1, 0.04, tile).sum().backward()
    assert LargestTensor.largest <= max(tile * tile, prototypes * dims, rows * dims)
    assert LargestTensor.largest < rows * prototypes // 10


def test_tiled_loss_runs_in_float32_under_autocast():
    pred, target, text, mask, correct = _reconstruction_inputs()
    expected, _ = LanguageSpaceReconstructionLoss(chunk_size=4)(pred, target, text, mask,
                                                                correct)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value, _ = LanguageSpaceReconstructionLoss(chunk_size=4)(pred, target, text, mask,
                                                                 correct)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize('value', [0, -1, 2.5, '8'])
def test_chunk_size_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match='chunk_size'):
        LanguageSpaceReconstructionLoss(chunk_size=value)
