"""The encoder's forms (one ``forward`` each) against the name older configs use.

``RILSPretrainViT`` is what configs and checkpoints written before the split name; each new
class must build the same modules (so those checkpoints load) and give the same outputs for the
same seed and inputs.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from rils_mm.models.backbones import intact_outputs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# The demo RILS at one block of width 32 on 32 px images (as tests/test_tools/tiny_demo.py).
TINY_RILS = {
    'model.backbone.arch.embed_dims': 32, 'model.backbone.arch.num_layers': 1,
    'model.backbone.arch.num_heads': 2, 'model.backbone.arch.feedforward_channels': 64,
    'model.backbone.img_size': 32, 'model.neck.num_patches': 16, 'model.neck.embed_dim': 32,
    'model.neck.decoder_embed_dim': 32, 'model.neck.decoder_num_heads': 2,
    'model.text_encoder.width': 32, 'model.text_encoder.layers': 1,
    'model.text_encoder.heads': 2, 'model.text_encoder.output_dim': 16, 'model.embed_dims': 16
}

TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def build(type_name, **kwargs):
    """A tiny encoder of class ``type_name``, weights drawn from seed 0."""
    torch.manual_seed(0)
    model = MODELS.build(dict(type=type_name, arch=TINY_ARCH, img_size=32, patch_size=8,
                              mask_ratio=0.75, **kwargs))
    model.init_weights()
    model.eval()  # (mmpretrain's ViT.train returns None)
    return model


def seeded(call, seed=4):
    """``call()`` under a fixed seed (the masking draws from torch's generator)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return call()


def assert_same(ours, reference):
    """Nested tuples of tensors, equal bit for bit."""
    assert type(ours) is type(reference) and len(ours) == len(reference)
    for a, b in zip(ours, reference):
        if isinstance(a, tuple):
            assert_same(a, b)
        else:
            assert torch.equal(a, b)


IMPORTANCE = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
NOISE = torch.rand(2, 16, generator=torch.Generator().manual_seed(6))
# (new class, the call on it, the same call on the old name)
FORMS = [
    ('RILSViT', lambda m: m(IMAGES), lambda m: m(IMAGES, mask=False)),
    ('RILSMaskedViT', lambda m: m(IMAGES), lambda m: m(IMAGES)),
    ('RILSMaskedViT', lambda m: m(IMAGES, mask=None), lambda m: m(IMAGES, mask=None)),
    ('RILSMaskedViT', lambda m: m(IMAGES, noise=NOISE, mask_ratio=0.5),
     lambda m: m(IMAGES, mask=True, noise=NOISE, mask_ratio=0.5)),
    ('RILSMILANViT', lambda m: m(IMAGES, IMPORTANCE), lambda m: m(IMAGES, IMPORTANCE)),
    ('RILSMILANViT', lambda m: m(IMAGES, importance=None), lambda m: m(IMAGES, mask=False)),
    ('RILSMultiPassViT', lambda m: m(IMAGES, passes=(None, 0.75)),
     lambda m: m(IMAGES, passes=(None, 0.75))),
    ('RILSMultiPassViT', lambda m: m(IMAGES, passes=(0.5, 0.8), noise=NOISE),
     lambda m: m(IMAGES, passes=(0.5, 0.8), noise=NOISE)),
]


@pytest.mark.parametrize('type_name,call,old_call', FORMS)
def test_each_form_equals_the_old_name(type_name, call, old_call):
    old, new = build('RILSPretrainViT'), build(type_name)
    assert {k: v.shape for k, v in old.state_dict().items()} == \
        {k: v.shape for k, v in new.state_dict().items()}
    # A checkpoint of the old name loads strictly and gives the same outputs.
    torch.manual_seed(9)
    fresh = MODELS.build(dict(type=type_name, arch=TINY_ARCH, img_size=32, patch_size=8,
                              mask_ratio=0.75))
    fresh.eval()
    fresh.load_state_dict(old.state_dict(), strict=True)
    assert_same(seeded(lambda: call(new)), seeded(lambda: old_call(old)))
    assert_same(seeded(lambda: call(fresh)), seeded(lambda: old_call(old)))
    # Every form gives the intact pass the same way.
    assert_same(intact_outputs(new, IMAGES), seeded(lambda: old(IMAGES, mask=False)))


def test_each_form_refuses_the_others_calls():
    with pytest.raises(TypeError):
        build('RILSViT')(IMAGES, mask=True)
    with pytest.raises(TypeError, match='RILSMILANViT'):
        build('RILSMaskedViT')(IMAGES, IMPORTANCE)
    with pytest.raises(TypeError):
        build('RILSMILANViT')(IMAGES, passes=(None, ))
    with pytest.raises(ValueError, match='importance'):
        build('RILSMILANViT')(IMAGES, IMPORTANCE > 0.5)


def test_an_old_rils_config_builds_the_same_model():
    """configs/rils/demo_cpu.py with the encoder named as before the split: same keys, same
    loss and gradients for the same seed."""
    losses, grads = [], []
    for backbone in (None, 'RILSPretrainViT'):
        cfg = Config.fromfile(osp.join(REPO, 'configs', 'rils', 'demo_cpu.py'))
        options = dict(TINY_RILS)
        if backbone:
            options['model.backbone.type'] = backbone
        cfg.merge_from_dict(options)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        generator = torch.Generator().manual_seed(1)
        data = dict(inputs=dict(images=torch.randint(0, 255, (4, 3, 32, 32),
                                                     generator=generator).float(),
                                texts=torch.randint(1, 400, (4, 77), generator=generator)))
        torch.manual_seed(5)
        total, log = model.parse_losses(model(**model.data_preprocessor(data, True),
                                              mode='loss'))
        total.backward()
        assert type(model.backbone).__name__ == (backbone or 'RILSMultiPassViT')
        losses.append(log)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0].keys() == losses[1].keys() and grads[0].keys() == grads[1].keys()
    for key in losses[0]:
        assert torch.equal(losses[0][key], losses[1][key]), key
    for key in grads[0]:
        assert torch.equal(grads[0][key], grads[1][key]), key


def test_only_the_decoder_block_is_read_at_some_tokens():
    from rils_mm.models.utils import QVBiasDecoderLayer, QVBiasTransformerLayer
    torch.manual_seed(0)
    encoder_block = QVBiasTransformerLayer(32, 4, 64)
    torch.manual_seed(0)
    decoder_block = QVBiasDecoderLayer(32, 4, 64)
    x = torch.randn(2, 5, 32)
    assert torch.equal(encoder_block(x), decoder_block(x))
    with pytest.raises(TypeError):
        encoder_block(x, query_index=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match='encoder blocks'):
        QVBiasDecoderLayer(32, 4, 64, window_size=4)
    decoder = MODELS.build(dict(type='RILSDecoder', num_patches=16, embed_dim=32,
                                decoder_embed_dim=32, decoder_num_heads=4, decoder_depth=2))
    assert {type(block) for block in decoder.decoder_blocks} == {QVBiasDecoderLayer}
    vit = build('RILSMultiPassViT')
    assert {type(block) for block in vit.layers} == {QVBiasTransformerLayer}
