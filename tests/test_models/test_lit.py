"""LiT: the six tower settings of configs/lit/, cached-feature training, and the locked set
against open_clip's ``lock_image_tower``."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from test_framework import TINY_ARCH

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Setting -> (image tower, text tower): L pretrained and locked, U pretrained and trained,
# u from scratch (the paper's Figure 3).
SETTINGS = {'L-U': 'LU', 'L-scratch': 'Lu', 'U-U': 'UU', 'U-scratch': 'Uu',
            'scratch-scratch': 'uu', 'U-L': 'UL'}


def tiny_lit(name, checkpoint, **model_overrides):
    """configs/lit/lit_b16_<name>.py at the tiny test size, its files set to ``checkpoint``."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'lit', f'lit_b16_{name}.py'))
    model = cfg.model
    model.backbone.update(arch=TINY_ARCH, img_size=32, patch_size=8)
    model.text_encoder.update(vocab_size=64, width=32, heads=4, layers=2)
    model.embed_dims = 16
    for tower in (model.backbone, model.text_encoder, model.image_head):
        init = tower.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            init.checkpoint = checkpoint
    model.update(model_overrides)
    return cfg


def batch(size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    texts = torch.randint(1, 60, (size, 77), generator=generator)
    texts[:, 8] = 63  # end of text: the highest id
    texts[:, 9:] = 0
    return dict(images=images, texts=texts)


def tower_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize('name', list(SETTINGS))
def test_each_setting_starts_from_the_checkpoint_and_keeps_locked_towers(name,
                                                                         clip_checkpoint):
    source, path = clip_checkpoint
    code = SETTINGS[name]
    cfg = tiny_lit(name, path)
    torch.manual_seed(123)  # the source model was built from seed 0
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    towers = dict(zip(('backbone', 'text_encoder'), code))
    start = {tower: tower_state(getattr(model, tower)) for tower in towers}
    for tower, letter in towers.items():
        reference = getattr(source, tower).state_dict()
        same = all(torch.equal(start[tower][k], reference[k]) for k in reference)
        assert same == (letter in 'LU'), (name, tower)  # pretrained: exactly the file's
        locked = not any(p.requires_grad for p in getattr(model, tower).parameters())
        assert locked == (letter == 'L'), (name, tower)
        assert getattr(model, tower).training == (letter != 'L')
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.update(type='OptimWrapper', optimizer=dict(optim_cfg.optimizer, lr=1e-2))
    optim_cfg.pop('dtype', None)
    optim_cfg.pop('loss_scale', None)
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    for step in range(3):
        data = model.data_preprocessor(dict(inputs=batch(seed=step)), True)
        optim_wrapper.update_params(model(**data, mode='loss')['loss_contrastive'])
    state = optim_wrapper.optimizer.state
    for tower, letter in towers.items():
        module = getattr(model, tower)
        now = module.state_dict()
        unchanged = all(torch.equal(now[k], v) for k, v in start[tower].items())
        assert unchanged == (letter == 'L'), (name, tower)
        if letter == 'L':  # no optimizer state (nor a place in the optimizer)
            assert not any(p in state for p in module.parameters())
    # The head on the image tower trains in every setting by default.
    assert model.image_head.projection.weight in state


def test_a_missing_or_mismatched_tower_file_stops_the_build(clip_checkpoint, tmp_path):
    source, _ = clip_checkpoint
    cfg = tiny_lit('L-U', str(tmp_path / 'nowhere.pth'))
    with pytest.raises(Exception, match='nowhere.pth'):
        MODELS.build(cfg.model).init_weights()
    text_only = str(tmp_path / 'text_only.pth')
    torch.save(dict(state_dict={k: v for k, v in source.state_dict().items()
                                if k.startswith('text_encoder.')}), text_only)
    cfg = tiny_lit('L-U', text_only)
    with pytest.raises(Exception, match=r'backbone\.|pos_embed|cls_token'):
        MODELS.build(cfg.model).init_weights()


def test_cached_features_give_the_loss_and_gradients_of_images(clip_checkpoint):
    _, path = clip_checkpoint
    torch.manual_seed(0)
    model = MODELS.build(tiny_lit('L-U', path).model)
    model.init_weights()
    data = model.data_preprocessor(dict(inputs=batch()), True)

    def loss_and_grads(inputs):
        model.zero_grad()
        loss = model(inputs, mode='loss')['loss_contrastive']
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    loss, grads = loss_and_grads(data['inputs'])
    with torch.no_grad():
        features = model.image_features(data['inputs']['images'])  # what the cache stores
    assert features.shape == (4, 32)
    cached = model.data_preprocessor(
        dict(inputs=dict(image_features=features, texts=batch()['texts'])), True)['inputs']
    cached_loss, cached_grads = loss_and_grads(cached)
    torch.testing.assert_close(cached_loss, loss)
    assert sorted(cached_grads) == sorted(grads)
    assert any(n.startswith('text_encoder.') for n in grads) and 'logit_scale' in grads
    assert 'image_head.projection.weight' in grads
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, msg=name)
    # Cached features need a locked image tower and a pooling without parameters.
    unlocked = MODELS.build(tiny_lit('U-U', path).model)
    with pytest.raises(ValueError, match='not locked'):
        unlocked(cached, mode='loss')
    attention = MODELS.build(tiny_lit('L-U', path, image_head=dict(
        type='ImageEmbeddingHead', pooling='attention', attention_heads=4)).model)
    with pytest.raises(ValueError, match='pooling'):
        attention(cached, mode='loss')


def test_locked_image_tower_is_open_clips_lock_image_tower(tmp_path):
    """open_clip's ``lock_image_tower`` on a CLIP freezes, name for name through the converter,
    what ``lock_cfg=dict(backbone=True, image_head=True)`` freezes in the converted model."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from rils_mm.tools.converters import open_clip_to_rils
    clip = CLIP(embed_dim=16,
                vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8,
                                         image_size=32, mlp_ratio=2),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=64, width=32, heads=4,
                                     layers=2),
                quick_gelu=True)
    clip.lock_image_tower()
    frozen = {n for n, p in clip.named_parameters() if not p.requires_grad}
    conversion = open_clip_to_rils(clip.state_dict())
    assert not conversion.missing
    expected = {target for source, target in conversion.mapped if source in frozen}
    path = str(tmp_path / 'converted.pth')
    torch.save(dict(state_dict=conversion.state_dict), path)
    cfg = tiny_lit('L-U_openai', path, lock_cfg=dict(backbone=True, image_head=True))
    cfg.model.backbone.arch = dict(embed_dims=32, num_layers=2, num_heads=4,
                                   feedforward_channels=64)
    model = MODELS.build(cfg.model)
    model.init_weights()  # every tower key from the converted file, checked
    ours = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert ours == expected
    assert all(n.startswith(('backbone.', 'image_head.')) for n in ours)
    # The converted towers compute open_clip's image embedding.
    images = torch.randn(2, 3, 32, 32)
    clip.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.image_head(model.backbone(images, mask=False)[-1]),
                                   clip.encode_image(images), rtol=1e-4, atol=1e-5)


def test_the_cached_config_trains_the_same_model_the_same_way():
    images = Config.fromfile(osp.join(REPO, 'configs', 'lit', 'lit_b16_L-U.py'))
    cached = Config.fromfile(osp.join(REPO, 'configs', 'lit', 'lit_b16_L-U_cached.py'))
    for key in ('model', 'optim_wrapper', 'param_scheduler', 'train_cfg', 'auto_scale_lr'):
        assert images[key] == cached[key], key
    assert cached.train_dataloader.dataset.image_exts == ('npy', )
    assert [t['type'] for t in cached.train_dataloader.dataset.pipeline] == [
        'LoadImageFeatures', 'CLIPTokenize', 'PackImageText']
    # The cache is made with the images' config, from its deterministic pipeline.
    assert not any('Random' in t['type'] for t in images.cache_pipeline)


def tiny_open_clip():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    return CLIP(embed_dim=16,
                vision_cfg=CLIPVisionCfg(layers=3, width=32, head_width=8, patch_size=8,
                                         image_size=32, mlp_ratio=2),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=64, width=32, heads=4,
                                     layers=3),
                quick_gelu=True)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_unlocked_groups_train_what_open_clips_lock_functions_train():
    """``lock_cfg=dict(backbone=dict(unlocked_groups=N), text_encoder=dict(unlocked_groups=N))``
    trains, name for name through the converter, what open_clip 3.3's ``lock_image_tower(N)``
    and ``lock_text_tower(N)`` leave trainable (the image projection is open_clip's last image
    group; here it is the image head's), for N = 0..3 on each tower alone and on both."""
    from rils_mm.tools.converters import open_clip_to_rils
    conversion = open_clip_to_rils(tiny_open_clip().state_dict())
    assert not conversion.missing

    def ours(lock_cfg):
        cfg = tiny_lit('L-U_openai', 'unused.pth')
        cfg.model.lock_cfg = lock_cfg  # replaces the config's, not merged into it
        cfg.model.backbone.arch = dict(embed_dims=32, num_layers=3, num_heads=4,
                                       feedforward_channels=64)
        cfg.model.text_encoder.layers = 3
        return trainable(MODELS.build(cfg.model))

    def expected(lock):
        clip = tiny_open_clip()
        lock(clip)
        kept = trainable(clip)
        return {target for source, target in conversion.mapped if source in kept}

    counts = []
    for n in range(4):
        image = expected(lambda clip: clip.lock_image_tower(unlocked_groups=n))
        got = ours(dict(backbone=dict(unlocked_groups=n)))
        assert got == image, (n, sorted(got ^ image))
        counts.append(len([k for k in got if k.startswith(('backbone.', 'image_head.'))]))
        text = expected(lambda clip: clip.lock_text_tower(unlocked_layers=n))
        got = ours(dict(text_encoder=dict(unlocked_groups=n)))
        assert got == text, (n, sorted(got ^ text))
        both = expected(lambda clip: (clip.lock_image_tower(unlocked_groups=n),
                                      clip.lock_text_tower(unlocked_layers=n)))
        got = ours(dict(backbone=dict(unlocked_groups=n), text_encoder=dict(unlocked_groups=n)))
        assert got == both, (n, sorted(got ^ both))
    # The projection alone, then one block more each time (a block here: 13 tensors, q and v
    # biases apart; the last one with the final norm).
    assert counts == [0, 1, 16, 29]
    # backbone=True still locks the encoder alone; the head follows lock_cfg.image_head.
    assert ours(dict(backbone=True)) == expected(
        lambda clip: clip.lock_image_tower(unlocked_groups=1))


def test_lock_cfg_mistakes_are_one_clear_error():
    cfg = tiny_lit('L-U', 'unused.pth')
    for lock_cfg, message in [
            (dict(backbone=dict(unlocked_groups=1), image_head=True), 'drop lock_cfg.image_head'),
            (dict(backbone=dict(unlocked_groups=9)), r'lock_cfg.backbone: unlocked_groups must '
             r'be an integer in \[0, 4\], got 9'),
            (dict(text_encoder=dict(unlocked_groups=-1)), r'in \[0, 4\], got -1'),
            (dict(backbone='yes'), 'must be True, False or dict')]:
        with pytest.raises(ValueError, match=message):
            MODELS.build(dict(copy.deepcopy(cfg.model.to_dict()), lock_cfg=lock_cfg))


def test_big_visions_form_has_no_image_head_projection():
    """configs/lit/lit_b16_L-U_no-projection.py: the image embedding is the normalised pooled
    encoder output and the text head maps to the encoder width."""
    import torch.nn.functional as F
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'lit', 'lit_b16_L-U_no-projection.py'))
    backbone = MODELS.get(cfg.model.backbone.type)
    assert cfg.model.embed_dims == backbone.arch_zoo[cfg.model.backbone.arch]['embed_dims'] == 768
    assert cfg.model.image_head.projection is False
    cfg = tiny_lit('L-U_no-projection', 'unused.pth', embed_dims=TINY_ARCH['embed_dims'])
    model = MODELS.build(cfg.model)
    model.image_head.init_weights()  # the towers' files are not written here
    model.eval()
    assert not list(model.image_head.parameters())
    assert model.text_encoder.text_projection.shape == (32, TINY_ARCH['embed_dims'])
    inputs = model.data_preprocessor(dict(inputs=batch()), True)['inputs']
    with torch.no_grad():
        pooled = model.backbone(inputs['images'], mask=False)[-1][:, 1:].mean(dim=1)
        torch.testing.assert_close(model.encode_image(inputs['images']),
                                   F.normalize(pooled, dim=-1))
        assert model.encode_text(inputs['texts']).shape == (4, TINY_ARCH['embed_dims'])
    model.train()
    model(inputs, mode='loss')['loss_contrastive'].backward()
    assert model.text_encoder.text_projection.grad is not None
    # The joint width must be the encoder's.
    with pytest.raises(ValueError, match='projection=False makes the joint width the encoder '
                       'width 32'):
        MODELS.build(tiny_lit('L-U_no-projection', 'unused.pth').model)
