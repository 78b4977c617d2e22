"""Per-patch losses (``reduction='none'``) and the algorithms' loss-map interface."""
import pytest
import torch
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from rils_mm.models.algorithms import LossMap, LossMapInputError, loss_map, register_loss_map
from rils_mm.models.heads import pixel_patch_losses


def test_language_loss_map_reduces_to_the_loss():
    loss = MODELS.build(dict(type='LanguageSpaceReconstructionLoss', loss_weight=1.0,
                             filter_correct=False))
    generator = torch.Generator().manual_seed(0)
    pred, target = (torch.randn(3, 16, 8, generator=generator) for _ in range(2))
    prototypes = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    mask = (torch.rand(3, 16, generator=generator) > 0.5).float()
    per_patch = loss(pred, target, prototypes, mask, reduction='none')
    assert per_patch.shape == (3, 16) and (per_patch >= 0).all()
    reduced, _ = loss(pred, target, prototypes, mask)
    torch.testing.assert_close((per_patch * mask).sum() / mask.sum(), reduced)
    head = MODELS.build(dict(type='LanguageReconstructionHead', embed_dims=8,
                             prototypes=dict(type='RandomPrototypes', num_prototypes=5),
                             loss=dict(type='LanguageSpaceReconstructionLoss',
                                       filter_correct=False)))
    assert torch.equal(head.loss(pred, target, None, mask, reduction='none'),
                       head.loss_module.dense_kl(pred, target, head.prototypes.prototypes))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        loss(pred, target, prototypes, mask, reduction='sum')


def test_pixel_loss_map_reduces_to_the_head_loss():
    head = MODELS.build(dict(type='MAEPretrainHead', norm_pix=True, patch_size=8,
                             loss=dict(type='PixelReconstructionLoss', criterion='L2')))
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    predictions = torch.randn(2, 16, 8 * 8 * 3, generator=generator)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    losses = pixel_patch_losses(head, predictions, images, mask)
    assert losses.per_patch.shape == (2, 16) and losses.name == 'pixel MSE (normalised patches)'
    torch.testing.assert_close(losses.total.mean(), head.loss(predictions, images, mask))


def test_a_subclass_uses_its_parents_loss_map_unless_it_registers_its_own():
    rils = MODELS.get('RILS')
    toy = type('ToyRILS', (rils, ), {})
    model = toy.__new__(toy)
    with pytest.raises(LossMapInputError, match='give captions'):
        torch.nn.Module.__init__(model)
        model.head = torch.nn.Module()
        from rils_mm.models.heads import CaptionPrototypes
        model.head.prototypes = CaptionPrototypes()
        loss_map(model, torch.zeros(1, 3, 32, 32))

    @register_loss_map('ToyRILS')
    def toy_map(model, images, captions=None):
        return LossMap(torch.ones(1, 16), loss_name='toy')

    assert loss_map(model, torch.zeros(1, 3, 32, 32)).loss_name == 'toy'
    with pytest.raises(LossMapInputError, match=r'^Module registers no loss map'):
        loss_map(torch.nn.Module(), torch.zeros(1, 3, 32, 32))
