"""The paper configs build the full-size towers and train one iteration on CPU."""
import copy
import io
import os.path as osp

import numpy as np
import open_clip
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.models import VisionTransformer
from mmpretrain.models.necks import MAEPretrainDecoder
from mmpretrain.registry import MODELS
from PIL import Image

import rils_mm  # noqa: F401
from rils_mm.datasets import ShardWriter

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def count(module_or_params):
    params = (module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module)
              else module_or_params)
    return sum(p.numel() for p in params)


@pytest.mark.parametrize('config,arch,width,layers,clip_name', [
    ('pretrain_b16.py', 'b', 768, 12, 'ViT-B-16'),
    ('pretrain_l16.py', 'l', 1024, 24, 'ViT-L-14'),
])
def test_full_size_parameter_counts(config, arch, width, layers, clip_name):
    # On the meta device: shapes only, no memory and no initialisation (seconds, not a minute).
    with torch.device('meta'):
        check_full_size_parameter_counts(config, arch, width, layers, clip_name)


def check_full_size_parameter_counts(config, arch, width, layers, clip_name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'rils', config))
    model = MODELS.build(cfg.model)
    # Vision encoder: mmpretrain's ViT of the same size, less the k part of the qkv bias.
    reference_vit = VisionTransformer(arch=arch, img_size=224, patch_size=16)
    assert count(model.backbone) == count(reference_vit) - layers * width
    # Decoder: one MAE decoder block of the encoder's width predicting encoder features.
    reference_decoder = MAEPretrainDecoder(num_patches=196, embed_dim=width,
                                           decoder_embed_dim=width, decoder_depth=1,
                                           decoder_num_heads=model.neck.decoder_blocks[0]
                                           .attn.num_heads, predict_feature_dim=width)
    assert count(model.neck) == count(reference_decoder) - width
    # Text tower: open_clip's CLIP text tower (ViT-B-16: width 512; ViT-L-14: width 768).
    clip = open_clip.create_model(clip_name, pretrained=None, device='meta')
    clip_text = [p for n, p in clip.named_parameters()
                 if not n.startswith('visual.') and n != 'logit_scale']
    assert count(model.text_encoder) == count(clip_text)
    joint = model.embed_dims
    assert count(model.image_head) == width * joint
    total = count(model)
    assert total == (count(model.backbone) + count(model.neck) + count(model.text_encoder) +
                     width * joint + 1)
    print(f'{config}: {total / 1e6:.1f}M parameters (vision {count(model.backbone) / 1e6:.1f}M, '
          f'decoder {count(model.neck) / 1e6:.1f}M, text {count(model.text_encoder) / 1e6:.1f}M)')


def write_shards(root, num_samples=4, size=224):
    rng = np.random.default_rng(0)
    with ShardWriter(str(root), samples_per_shard=num_samples) as writer:
        for i in range(num_samples):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format='JPEG')
            writer.write(f'{i:09d}', dict(jpg=buffer.getvalue(), txt=f'a photo number {i}'))
    return osp.join(str(root), '00000.tar')


def one_iteration_config(config, tmp_path):
    """A full-size config reduced to one CPU iteration of batch 2 on two written pairs."""
    shard = write_shards(tmp_path / 'shards')
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False,
                                pin_memory=False)
    cfg.train_dataloader.dataset.update(shards=shard, batch_size=2, samples_per_epoch=2)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs an accelerator
    cfg.optim_wrapper.pop('dtype')
    cfg.optim_wrapper.pop('loss_scale')
    cfg.train_cfg.max_epochs = 1
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    # What --no-validate does: the image-text recipes validate on data/imagenet/val, which
    # these runs do not have (tests/test_tools/test_zero_shot_val_recipes.py validates them).
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def test_pretrain_b16_runs_one_iteration_on_cpu(tmp_path):
    cfg = one_iteration_config('rils/pretrain_b16.py', tmp_path)
    runner = Runner.from_cfg(cfg)
    recorder = ParameterChangeRecorder()
    runner.register_hook(recorder)
    runner.train()
    assert runner.iter == 1
    hub = runner.message_hub
    for key in ('loss', 'loss_contrastive', 'loss_reconstruction'):
        assert np.isfinite(hub.get_scalar(f'train/{key}').current())
    for name in ('backbone.layers.11.attn.q_bias', 'neck.decoder_blocks.0.attn.qkv.weight',
                 'text_encoder.token_embedding.weight', 'image_head.projection.weight'):
        assert name in recorder.changed, name
    assert 'backbone.pos_embed' not in recorder.changed  # fixed sin-cos
    # Weight decay 0.5 on weight matrices only (the paper recipe).
    decay = {}
    names = {id(p): n for n, p in runner.model.named_parameters()}
    for group in runner.optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            decay[names[id(param)]] = group['weight_decay']
    assert decay['backbone.layers.0.attn.qkv.weight'] == 0.5
    assert decay['text_encoder.transformer.resblocks.0.mlp.c_fc.weight'] == 0.5
    for name in ('logit_scale', 'backbone.cls_token', 'backbone.layers.0.attn.q_bias',
                 'backbone.layers.0.ln1.weight', 'neck.mask_token',
                 'text_encoder.positional_embedding', 'backbone.patch_embed.projection.bias'):
        assert decay[name] == 0.0, name


class ParameterChangeRecorder(Hook):
    """Records which parameters the first training iteration changed (after initialisation)."""

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.changed = [n for n, p in runner.model.named_parameters()
                        if not torch.equal(p, self.before[n])]


def test_clip_baseline_config_is_rils_without_decoder():
    rils = MODELS.build(Config.fromfile(osp.join(REPO, 'configs', 'rils', 'pretrain_b16.py'))
                        .model)
    clip = MODELS.build(Config.fromfile(osp.join(REPO, 'configs', 'clip', 'pretrain_b16.py'))
                        .model)
    assert type(clip).__name__ == 'ImageTextPretrainer' and clip.neck is None
    assert count(clip) == count(rils) - count(rils.neck)


@pytest.mark.parametrize('config,losses', [
    ('clip/pretrain_b16.py', ('loss_contrastive', )),
    ('mae/pretrain_b16.py', ('loss', )),
    ('mae_clip/pretrain_b16.py', ('loss_contrastive', 'loss_pixel')),
    ('rils/pretrain_b16_vision-space.py', ('loss_contrastive', 'loss_reconstruction')),
])
def test_baseline_configs_run_one_iteration_on_cpu(config, losses, tmp_path):
    cfg = one_iteration_config(config, tmp_path)
    runner = Runner.from_cfg(cfg)
    recorder = ParameterChangeRecorder()
    runner.register_hook(recorder)
    runner.train()
    assert runner.iter == 1
    for key in losses:
        assert np.isfinite(runner.message_hub.get_scalar(f'train/{key}').current()), key
    assert 'backbone.layers.11.attn.q_bias' in recorder.changed
    assert 'backbone.pos_embed' not in recorder.changed


def test_baseline_configs_full_size_parameter_counts():
    """MAE and MAE+CLIP use mmpretrain's MAE decoder unchanged (8 blocks, width 512); the
    vision-space RILS adds K x D fixed prototypes and no parameter."""
    def build(config):
        return MODELS.build(Config.fromfile(osp.join(REPO, 'configs', config)).model)

    rils, vision_space = build('rils/pretrain_b16.py'), build('rils/pretrain_b16_vision-space.py')
    mae, mae_clip, clip = (build('mae/pretrain_b16.py'), build('mae_clip/pretrain_b16.py'),
                           build('clip/pretrain_b16.py'))
    reference_decoder = MAEPretrainDecoder(num_patches=196, patch_size=16, embed_dim=768,
                                           decoder_embed_dim=512, decoder_depth=8,
                                           decoder_num_heads=16)
    assert type(mae).__name__ == 'MAE' and type(mae.backbone).__name__ == 'RILSMaskedViT'
    assert count(mae.neck) == count(mae_clip.neck) == count(reference_decoder)
    assert count(mae.backbone) == count(clip.backbone) == count(rils.backbone)
    assert count(mae_clip) == count(clip) + count(reference_decoder)
    assert count(vision_space) == count(rils)
    assert vision_space.head.prototypes.prototypes.shape == (4096, 512)
    torch.testing.assert_close(vision_space.head.prototypes.prototypes.norm(dim=-1),
                               torch.ones(4096))


@pytest.mark.parametrize('chain,first_stage', [
    ('two_stage/mim_to_clip_b16.py', 'mae/pretrain_b16.py'),
    ('two_stage/clip_to_mim_b16.py', 'clip/pretrain_b16.py'),
    ('two_stage/mim_to_lit_b16.py', 'mae/pretrain_b16.py'),
])
def test_second_stage_starts_from_the_first_stage_encoder(chain, first_stage, tmp_path):
    """Stage 2 of each B/16 chain loads stage 1's encoder (checked) and trains an iteration."""
    chain_cfg = Config.fromfile(osp.join(REPO, 'configs', chain))
    assert chain_cfg.stages[0].config.endswith(first_stage)
    first = MODELS.build(Config.fromfile(osp.join(REPO, 'configs', first_stage)).model)
    checkpoint = str(tmp_path / 'stage1.pth')
    torch.save(dict(state_dict=first.state_dict()), checkpoint)
    second_config = osp.normpath(osp.join('two_stage', chain_cfg.stages[1].config))
    cfg = one_iteration_config(second_config, tmp_path)
    key = chain_cfg.stages[1].init_key
    assert key == 'model.backbone.init_cfg.checkpoint'
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    runner = Runner.from_cfg(cfg)
    recorder = ParameterChangeRecorder()
    runner.register_hook(recorder)
    runner.train()
    for name, value in first.backbone.state_dict().items():
        if f'backbone.{name}' in recorder.before:
            torch.testing.assert_close(recorder.before[f'backbone.{name}'], value, rtol=0, atol=0)
    # A missing stage-1 checkpoint fails, naming it.
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'missing.pth')
    cfg.work_dir = str(tmp_path / 'work2')
    with pytest.raises(Exception, match='missing.pth'):
        Runner.from_cfg(cfg).train()


def test_milan_b16_runs_one_iteration_with_a_frozen_teacher(tmp_path):
    """The MILAN ViT-B/16 config with a (random) OpenAI-layout ViT-B/16 CLIP teacher file."""
    teacher_file = str(tmp_path / 'openai_clip_vit_b16.pt')
    torch.save(open_clip.create_model('ViT-B-16-quickgelu', pretrained=None).state_dict(),
               teacher_file)
    cfg = one_iteration_config('milan/pretrain_b16_laion.py', tmp_path)
    cfg.model.target_generator.model.pretrained = teacher_file
    runner = Runner.from_cfg(cfg)
    teacher_before = {k: v.clone() for k, v in
                      runner.model.target_generator.state_dict().items()}
    recorder = ParameterChangeRecorder()
    runner.register_hook(recorder)
    runner.train()
    assert runner.iter == 1
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert 0 <= loss <= 4  # 2 - 2 cos
    for name in ('backbone.layers.11.attn.q_bias', 'neck.decoder_blocks.7.attn.q.weight',
                 'neck.decoder_pred.weight', 'neck.mask_token'):
        assert name in recorder.changed, name
    # The teacher: bitwise unchanged, in eval mode, and not in the optimizer.
    teacher = runner.model.target_generator
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not teacher.training and not teacher.image_tower.training
    assert list(teacher.image_tower) == ['visual']  # no text tower
    optimized = {id(p) for group in runner.optim_wrapper.optimizer.param_groups
                 for p in group['params']}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert {id(p) for n, p in runner.model.named_parameters()
            if p.requires_grad and not n.startswith('target_generator.')} <= optimized
    assert runner.model.neck.decoder_embed.in_features == 768  # the encoder's width
    # The ImageNet-folder config is the same model, reading BGR images.
    imagenet = Config.fromfile(osp.join(REPO, 'configs', 'milan', 'pretrain_b16.py')).model
    laion = Config.fromfile(osp.join(REPO, 'configs', 'milan', 'pretrain_b16_laion.py')).model
    assert imagenet.data_preprocessor.pop('to_rgb') and laion == imagenet
    # A teacher file of another architecture fails naming the keys it cannot take.
    cfg.model.target_generator.model.arch = 'ViT-B-32-quickgelu'
    with pytest.raises(Exception, match='conv1.weight'):
        MODELS.build(cfg.model.target_generator)


def test_lit_b16_runs_one_iteration_from_a_clip_checkpoint(tmp_path):
    """LiT "LU" at full size: both towers from a (random) ViT-B/16 CLIP checkpoint of this
    package, checked loading, the image tower locked, big_vision's schedule."""
    torch.manual_seed(0)
    clip = MODELS.build(Config.fromfile(osp.join(REPO, 'configs', 'clip', 'pretrain_b16.py'))
                        .model)
    checkpoint = str(tmp_path / 'clip_b16.pth')
    torch.save(dict(state_dict=clip.state_dict()), checkpoint)
    cfg = one_iteration_config('lit/lit_b16_L-U.py', tmp_path)
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg.model.text_encoder.init_cfg.checkpoint = checkpoint
    runner = Runner.from_cfg(cfg)
    recorder = ParameterChangeRecorder()
    runner.register_hook(recorder)
    runner.train()
    assert np.isfinite(runner.message_hub.get_scalar('train/loss_contrastive').current())
    # Both towers started at the checkpoint's weights (the parameters; fixed tables too).
    for key, value in clip.state_dict().items():
        if key.startswith(('backbone.', 'text_encoder.')) and key in recorder.before:
            torch.testing.assert_close(recorder.before[key], value, rtol=0, atol=0)
    assert not any(n.startswith('backbone.') for n in recorder.changed)
    assert 'text_encoder.transformer.resblocks.11.mlp.c_fc.weight' in recorder.changed
    assert 'image_head.projection.weight' in recorder.changed
    assert runner.model.logit_scale.exp().item() == pytest.approx(10, rel=1e-3)
    assert runner.optim_wrapper.clip_grad_kwargs['max_norm'] == 1.0


def test_mammut_b16_config_has_a_clip_text_tower_sized_decoder():
    """configs/mammut/pretrain_b16.py: the RILS ViT-B/16, and a decoder with the CLIP ViT-B/16
    text tower's blocks plus a cross-attention block after every second one."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mammut', 'pretrain_b16.py'))
    model = MODELS.build(cfg.model)
    decoder = model.text_encoder
    assert len(decoder.resblocks) == 12 and sorted(map(int, decoder.cross_blocks)) == list(
        range(1, 12, 2))
    clip_text = open_clip.create_model('ViT-B-16', pretrained=None).transformer
    assert count(decoder.resblocks) == count(clip_text)
    assert count(model.backbone) == count(MODELS.build(Config.fromfile(
        osp.join(REPO, 'configs', 'clip', 'pretrain_b16.py')).model).backbone)
    assert type(model.loss_contrastive).__name__ == 'FocalContrastiveLoss'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['logit_bias'] == dict(decay_mult=0.0)
    large = Config.fromfile(osp.join(REPO, 'configs', 'mammut', 'pretrain_l16.py')).model
    assert (large.backbone.arch, large.text_encoder.width, large.embed_dims) == ('l', 768, 768)


@pytest.mark.parametrize('method', ['rils', 'clip'])
def test_accumulated_8_gpu_configs_keep_the_paper_batch_and_lr(method):
    """configs/<method>/pretrain_b16_8xb128-accum4.py: 8 GPUs x 4 micro-batches of 128 are the
    paper's 4096 pairs in one optimizer step, at the paper's lr (no rescaling); otherwise
    pretrain_b16.py. The full-size model is built on the meta device."""
    from rils_mm.tools.cli import check_train_config
    cfg = Config.fromfile(osp.join(REPO, 'configs', method, 'pretrain_b16_8xb128-accum4.py'))
    base = Config.fromfile(osp.join(REPO, 'configs', method, 'pretrain_b16.py'))
    loader = cfg.train_dataloader
    micro_batches = cfg.model.accumulation.micro_batches
    assert micro_batches == 4 and loader.batch_size == loader.dataset.batch_size == 4 * 128
    # mmengine's auto_scale_lr multiplies the lr by world size x batch_size / base batch.
    assert cfg.auto_scale_lr.enable and 8 * loader.batch_size == cfg.auto_scale_lr.base_batch_size
    assert cfg.optim_wrapper.optimizer.lr == 5e-4
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg'):
        assert cfg[key] == base[key], key
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('accumulation')
    assert model_cfg == base.model
    with torch.device('meta'):
        model, reference = MODELS.build(cfg.model), MODELS.build(base.model)
    assert model.micro_batches == 4 and count(model) == count(reference)
    # A distributed run gets the accumulating DDP wrapper from tools/train.py.
    cfg.launcher = 'pytorch'
    check_train_config(cfg)
    assert cfg.model_wrapper_cfg.type == 'GradCacheDistributedDataParallel'
