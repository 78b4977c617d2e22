"""Export to open_clip (``tools/model_converters/rils_to_open_clip.py``).

Tiny checkpoints of every image-text method are written here as ``tools/train.py`` writes
them (weights and the config under ``meta['cfg']``); one new process runs the command-line
tool on each of them and on the bad inputs; this process loads the written directories with
open_clip's own ``create_model_and_transforms('local-dir:...')`` and compares its embeddings
and preprocessing with ours. The round trip open_clip -> ours -> open_clip is checked tensor
by tensor.
"""
import io
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from rils_mm.models.utils.inference_loading import build_and_load
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = 'tools/model_converters/rils_to_open_clip.py'
CONVERTER = 'tools/dataset_converters/to_clip_benchmark.py'
PROG = f'{TOOL}: error: '
IMG = 32

# A one-block ViT of width 32 on 32 px images in 8 px patches, a one-block text tower of width
# 32, joint width 16. The text tower uses GELU as the image tower does: open_clip 3.3 has one
# activation for both towers (the default configs' QuickGELU text tower is refused, below).
TOWERS = {
    'model.backbone.arch': dict(embed_dims=32, num_layers=1, num_heads=2,
                                feedforward_channels=64),
    'model.backbone.img_size': IMG, 'model.text_encoder.width': 32,
    'model.text_encoder.layers': 1, 'model.text_encoder.heads': 2, 'model.embed_dims': 16,
    'model.text_encoder.quick_gelu': False}
RILS_NECK = {'model.neck.num_patches': 16, 'model.neck.embed_dim': 32,
             'model.neck.decoder_embed_dim': 32, 'model.neck.decoder_num_heads': 2}
MAE_NECK = dict(RILS_NECK, **{'model.neck.decoder_depth': 1})
# name: (config, extra options); every image-text method of configs/methods.yml but MaMMUT.
METHODS = {
    'clip': ('configs/clip/demo_cpu.py', {}),
    'rils': ('configs/rils/demo_cpu.py', RILS_NECK),
    'rils_vision-space': ('configs/rils/demo_cpu_vision-space.py', RILS_NECK),
    'rils_flip': ('configs/rils/demo_cpu_flip.py', RILS_NECK),
    'mae_clip': ('configs/mae_clip/demo_cpu.py', MAE_NECK),
    'lit': ('configs/lit/demo_cpu_L-U.py', {}),
    # big_vision's form: no image projection, the joint width the encoder's (open_clip's proj
    # is then the identity matrix).
    'lit_no-projection': ('configs/lit/demo_cpu_L-U.py', {'model.embed_dims': 32,
                                                          'model.image_head.projection': False}),
}
# The default towers (a GELU image tower, a QuickGELU text tower) at the size of timm's
# 'test_vit' (width 64, 6 blocks, 2 heads, MLP 192, 16 px patches, 160 px images): the image
# tower goes out as that timm model (as a ViT-B/16 goes out as 'vit_base_patch16_224').
TIMM_TOWERS = dict(TOWERS, **{
    'model.backbone.arch': dict(embed_dims=64, num_layers=6, num_heads=2,
                                feedforward_channels=192),
    'model.backbone.img_size': 160, 'model.backbone.patch_size': 16,
    'model.text_encoder.quick_gelu': True, 'model.neck.num_patches': 100,
    'model.neck.embed_dim': 64, 'model.neck.decoder_embed_dim': 32,
    'model.neck.decoder_num_heads': 2})
TIMM_METHODS = {'rils_timm': ('configs/rils/demo_cpu.py', TIMM_TOWERS)}


def tiny_config(config, options):
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(options)
    size = options.get('model.backbone.img_size', IMG)
    cfg.test_pipeline[1]['scale'] = size  # ResizeEdge, CenterCrop
    cfg.test_pipeline[2]['crop_size'] = size
    return cfg


def save_tiny(cfg, path, seed=0, extra=None):
    """Build ``cfg.model`` with every weight perturbed (no zero bias anywhere, patch-embedding
    bias included) and save it as tools/train.py does; return the model."""
    torch.manual_seed(seed)
    model = build_and_load(cfg.model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    state_dict = dict(model.state_dict(), **(extra or {}))
    torch.save(dict(state_dict=state_dict, meta=dict(cfg=cfg.pretty_text)), path)
    return model


# One process runs the tool on every case (the tool's own file, as `python TOOL CKPT OUT`
# does) and reports each exit status; stderr is folded into stdout to keep the order.
DRIVER = r'''
import runpy, sys
sys.stderr = sys.stdout
for line in open(sys.argv[1]):
    name, *argv = line.split()
    sys.argv = [TOOL, *argv]
    try:
        runpy.run_path(TOOL, run_name='__main__')
        code = 0
    except SystemExit as exit:
        code = exit.code
    print(f'=== {name} exit {code}', flush=True)
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """name -> (our model, its config, the tool's output, exit status, output folder)."""
    root = tmp_path_factory.mktemp('open_clip_export')
    cases, models = {}, {}
    for name, (config, options) in dict(METHODS, **TIMM_METHODS).items():
        cfg = tiny_config(config, dict(TOWERS, **options))
        models[name] = (save_tiny(cfg, root / f'{name}.pth').eval(), cfg)
        cases[name] = [root / f'{name}.pth', root / name]
    # Bad inputs.
    mae = tiny_config('configs/mae/demo_cpu.py', {
        'model.backbone.arch': TOWERS['model.backbone.arch'], 'model.backbone.img_size': IMG,
        **MAE_NECK})
    save_tiny(mae, root / 'mae.pth')
    cases['mae'] = [root / 'mae.pth', root / 'mae']
    mammut = tiny_config('configs/mammut/demo_cpu.py', {
        k: v for k, v in TOWERS.items() if k != 'model.text_encoder.quick_gelu'})
    save_tiny(mammut, root / 'mammut.pth')
    cases['mammut'] = [root / 'mammut.pth', root / 'mammut']
    rils_cfg = tiny_config(METHODS['rils'][0], dict(TOWERS, **RILS_NECK))
    save_tiny(rils_cfg, root / 'unknown_keys.pth',
              extra={'head.extra.weight': torch.zeros(3)})
    cases['unknown_keys'] = [root / 'unknown_keys.pth', root / 'unknown_keys']
    default_text = tiny_config(METHODS['rils'][0], dict(
        TOWERS, **RILS_NECK, **{'model.text_encoder.quick_gelu': True}))
    save_tiny(default_text, root / 'quick_gelu_text.pth')
    cases['quick_gelu_text'] = [root / 'quick_gelu_text.pth', root / 'quick_gelu_text']
    torch.save(dict(state_dict=models['clip'][0].state_dict()), root / 'no_cfg.pth')
    cases['no_cfg'] = [root / 'no_cfg.pth', root / 'no_cfg']
    # A config text that runs code when executed (Config.fromstring would): read, not run.
    crafted = (f"model = __import__('pathlib').Path({str(root / 'ran')!r}).write_text('ran')\n"
               f"{models['clip'][1].pretty_text}".replace('\nmodel = dict(', '\nmodel_ = dict('))
    torch.save(dict(state_dict=models['clip'][0].state_dict(), meta=dict(cfg=crafted)),
               root / 'code_cfg.pth')
    cases['code_cfg'] = [root / 'code_cfg.pth', root / 'code_cfg']
    cases['missing'] = [root / 'missing.pth', root / 'missing']

    listing = root / 'cases.txt'
    listing.write_text(''.join(f'{name} {" ".join(map(str, argv))}\n'
                               for name, argv in cases.items()))
    result = run_python(
        [sys.executable, '-c', f'TOOL = {TOOL!r}\n' + DRIVER, str(listing)], cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outputs, lines = {}, []
    for line in result.stdout.splitlines():
        if line.startswith('=== '):
            _, name, _, code = line.split()
            outputs[name] = ('\n'.join(lines), int(code))
            lines = []
        else:
            lines.append(line)
    assert set(outputs) == set(cases), result.stdout[-3000:]
    return {name: (*models.get(name, (None, None)), *outputs[name], str(cases[name][1]))
            for name in cases}


def token_ids(model, captions=('a large red circle on the left', 'a small blue square', '')):
    return model.tokenize(list(captions))


@pytest.mark.parametrize('name', list(METHODS) + list(TIMM_METHODS))
def test_open_clip_loads_the_export_and_embeds_as_ours(name, exported):
    import open_clip
    ours, cfg, output, code, out_dir = exported[name]
    size = cfg.model.backbone.img_size
    assert code == 0, output[-3000:]
    assert sorted(os.listdir(out_dir)) == ['open_clip_config.json',
                                           'open_clip_model.safetensors']
    modes = {os.stat(osp.join(out_dir, f)).st_mode & 0o777 for f in os.listdir(out_dir)}
    assert len(modes) == 1  # the weights as readable as the config (a new file's default)
    assert 'largest absolute difference' in output

    # open_clip's own loading of a local directory, strict (every key of its CLIP).
    theirs, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{out_dir}')
    theirs.eval()
    assert type(theirs).__name__ == 'CLIP'
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    texts = token_ids(ours)
    tokenizer = open_clip.get_tokenizer(f'local-dir:{out_dir}')
    assert torch.equal(tokenizer(['a large red circle on the left', 'a small blue square', '']),
                       texts)
    with torch.no_grad():
        image_difference = (theirs.encode_image(images, normalize=True)
                            - ours.encode_image(images)).abs().max()
        text_difference = (theirs.encode_text(texts, normalize=True)
                           - ours.encode_text(texts)).abs().max()
    assert image_difference < 1e-5 and text_difference < 1e-5
    torch.testing.assert_close(theirs.logit_scale, ours.logit_scale, rtol=0, atol=0)

    # The preprocessing written is our test pipeline's and the data preprocessor's.
    written = json.loads(open(osp.join(out_dir, 'open_clip_config.json')).read())
    pre = written['preprocess_cfg']
    assert pre['size'] == size == cfg.test_pipeline[1]['scale'] == cfg.test_pipeline[2][
        'crop_size']
    assert pre['interpolation'] == cfg.test_pipeline[1]['interpolation'] == 'bicubic'
    assert pre['resize_mode'] == 'shortest'  # ResizeEdge(edge='short') + CenterCrop
    np.testing.assert_allclose(pre['mean'], np.array(ours.data_preprocessor.mean).ravel() / 255,
                               rtol=1e-6)  # the preprocessor holds float32
    np.testing.assert_allclose(pre['std'], np.array(ours.data_preprocessor.std).ravel() / 255,
                               rtol=1e-6)  # the preprocessor holds float32
    model_cfg = written['model_cfg']
    if name in TIMM_METHODS:  # QuickGELU text tower, the image tower timm's (GELU)
        assert model_cfg['quick_gelu'] is True
        assert model_cfg['vision_cfg'] == dict(
            timm_model_name='test_vit', timm_model_pretrained=False, timm_pool='avg',
            timm_proj='linear', timm_proj_bias=False, image_size=size)
        assert type(theirs.visual).__name__ == 'TimmModel'
        return
    assert model_cfg['quick_gelu'] is False
    assert model_cfg['vision_cfg']['pool_type'] == 'avg'  # mean over the patch tokens
    assert model_cfg['vision_cfg']['no_ln_pre'] is True
    assert model_cfg['vision_cfg']['pos_embed_type'] == 'sin_cos_2d'  # ours is fixed
    assert model_cfg['vision_cfg']['norm_kwargs'] == {'eps': 1e-6}


def test_open_clip_preprocessing_gives_our_test_pipeline_tensors(exported, tmp_path):
    """A non-square image through open_clip's eval transform and through our test pipeline
    plus the data preprocessor: the same model input."""
    import open_clip
    from mmcv.transforms import Compose
    from mmengine.registry import DefaultScope
    ours, cfg, _, code, out_dir = exported['rils']
    assert code == 0
    path = tmp_path / 'image.png'
    pixels = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    _, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{out_dir}')
    theirs = preprocess(Image.open(path))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        packed = Compose(cfg.test_pipeline)(dict(img_path=str(path), text='a caption'))
    batch = ours.data_preprocessor(dict(inputs=[packed['inputs']['images']]
                                        if isinstance(packed['inputs'], dict)
                                        else [packed['inputs']],
                                        data_samples=[packed['data_samples']]))
    mine = batch['inputs']['images'][0] if isinstance(batch['inputs'], dict) else batch[
        'inputs'][0]
    assert theirs.shape == mine.shape == (3, IMG, IMG)
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-5)


def one_error_line(output):
    errors = [line for line in output.splitlines() if line.startswith(PROG)]
    assert len(errors) == 1 and 'Traceback' not in output, output[-3000:]
    return errors[0][len(PROG):]


@pytest.mark.parametrize('name, code, words', [
    ('mae', 1, ['mae.pth: a MAE checkpoint has no text tower', 'rils_to_toolbox.py']),
    ('mammut', 1, ['mammut.pth: image_head norm_cfg', 'open_clip 3.3 cannot express it',
                   'one ln_post', "; text_encoder MaMMUTTextDecoder (MaMMUT's contrastive",
                   'averages the valid tokens']),
    ('unknown_keys', 1, ['unknown_keys.pth holds 1 weights', 'head.extra.weight']),
    ('quick_gelu_text', 1, ['an image tower with GELU and a text tower with QuickGELU',
                            'no timm ViT has this image tower', 'text_encoder.quick_gelu=False']),
    ('no_cfg', 2, ["no_cfg.pth holds no config (meta['cfg']", '--config']),
    ('code_cfg', 2, ["code_cfg.pth: its config (meta['cfg']) has no model written as literals",
                     '--config']),
    ('missing', 2, ['checkpoint not found:', 'missing.pth']),
])
def test_bad_input_is_one_line_naming_the_file(name, code, words, exported):
    _, _, output, status, out_dir = exported[name]
    assert status == code, output[-3000:]
    line = one_error_line(output)
    for word in words:
        assert word in line, line
    assert not osp.exists(out_dir)  # nothing written
    assert not osp.exists(osp.join(osp.dirname(out_dir), 'ran'))  # nothing from a file ran


@pytest.mark.parametrize('quick_gelu', [True, False])
def test_round_trip_open_clip_ours_open_clip_is_bitwise(quick_gelu):
    """open_clip -> ours (open_clip_to_rils) -> open_clip (to_open_clip): every tensor the
    same bits; the k part of the attention bias, which the import drops (it cancels in the
    softmax), comes back as zeros."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from rils_mm.tools.converters import open_clip_to_rils
    from rils_mm.tools.open_clip_export import to_open_clip

    torch.manual_seed(0)
    clip = CLIP(embed_dim=16,
                vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8,
                                         image_size=IMG, mlp_ratio=2),
                text_cfg=CLIPTextCfg(context_length=16, vocab_size=64, width=32, heads=2,
                                     layers=2),
                quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    original = clip.state_dict()
    imported = open_clip_to_rils(original)
    act = dict(act_cfg=dict(type='QuickGELU')) if quick_gelu else dict()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        ours = MODELS.build(dict(
            type='ImageTextPretrainer',
            backbone=dict(type='RILSViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                                    feedforward_channels=64),
                          img_size=IMG, patch_size=8, pre_norm=True,
                          norm_cfg=dict(type='LN', eps=1e-5), layer_cfgs=act),
            text_encoder=dict(type='CLIPTextEncoder', context_length=16, vocab_size=64,
                              width=32, heads=2, layers=2, quick_gelu=quick_gelu),
            image_head=dict(type='ImageEmbeddingHead', pooling='cls_token'),
            embed_dims=16)).eval()
    ours.load_state_dict(imported.state_dict, strict=True)
    back = to_open_clip(ours)
    assert back.model_cfg['quick_gelu'] is quick_gelu
    assert back.model_cfg['vision_cfg']['pool_type'] == 'tok'
    assert back.model_cfg['vision_cfg']['no_ln_pre'] is False
    assert 'norm_kwargs' not in back.model_cfg['vision_cfg']  # open_clip's eps, 1e-5
    assert sorted(back.state_dict) == sorted(original)
    for key, value in original.items():
        if key.endswith('attn.in_proj_bias') and key.startswith('visual.'):
            q, k, v = back.state_dict[key].chunk(3)
            oq, _, ov = value.chunk(3)
            assert torch.equal(q, oq) and torch.equal(v, ov) and not k.any(), key
        else:
            assert back.state_dict[key].dtype == value.dtype
            assert torch.equal(back.state_dict[key], value), key


# --- clip_benchmark on an exported model --------------------------------------------------------
def run_tool(*args):
    result = run_python([sys.executable, *map(str, args)], cwd=REPO,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True,
                        text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def clip_benchmark(task, dataset_root, model_dir, output):
    """clip_benchmark's own command line (its console script's module) on a local
    webdataset; its metrics."""
    run_tool('-m', 'clip_benchmark.cli', 'eval', '--dataset', 'wds/demo_shapes',
             '--dataset_root', dataset_root, '--model', f'local-dir:{model_dir}',
             '--pretrained', '', '--task', task, '--output', output, '--batch_size', '16',
             '--num_workers', '0', '--no_amp', '--recall_k', '1', '5')
    return json.loads(open(output).read())['metrics']


def clip_benchmark_classification(dataset_root, model_dir):
    """Zero-shot top-1 and top-5 (%) of clip_benchmark's own loader, dataset builder,
    classifier and inference (``zero_shot_classifier``, ``run_classification``) on a local
    webdataset.

    Its command line (``clip_benchmark eval --task zeroshot_classification``) computes the
    same logits and then stops in its ``accuracy()`` with numpy >= 2.4 (``float()`` of a
    one-element array, an error since numpy 2.4); the top-k here is taken from its logits.
    """
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import (run_classification,
                                                                 zero_shot_classifier)
    from clip_benchmark.models import load_clip
    model, transform, tokenizer = load_clip(model_type='open_clip',
                                            model_name=f'local-dir:{model_dir}', pretrained='',
                                            cache_dir=None, device='cpu')
    model.eval()
    dataset = build_dataset('wds/demo_shapes', root=dataset_root, transform=transform,
                            split='test', task='zeroshot_classification')
    loader = torch.utils.data.DataLoader(dataset.batched(16), batch_size=None, num_workers=0)
    classifier = zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates,
                                      'cpu', amp=False)
    logits, target = run_classification(model, classifier, loader, 'cpu', amp=False)
    top5 = logits.topk(5, dim=1).indices
    return {1: (top5[:, 0] == target).float().mean().item() * 100,
            5: (top5 == target[:, None]).any(dim=1).float().mean().item() * 100}


def figures_of_test_tool(base, options, checkpoint, tmp_path, name):
    """The metrics ``tools/test.py`` prints for ``base`` (a demo zero-shot or retrieval
    config) with ``options``, on ``checkpoint``."""
    import re
    cfg = Config.fromfile(osp.join(REPO, base))
    cfg.merge_from_dict(options)
    config = str(tmp_path / f'{name}.py')
    cfg.dump(config)
    out = run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path / name)
    lines = [line for line in out.splitlines() if 'Epoch(test)' in line]
    assert lines, out[-3000:]
    return {key: float(value)
            for key, value in re.findall(r'(\S+): (-?[\d.]+)', lines[-1].split(']', 2)[-1])}


def test_clip_benchmark_gives_our_test_tool_figures(exported, tmp_path):
    """clip_benchmark's CLI on the exported tiny RILS and on webdatasets of the held-out demo
    images: zero-shot top-1 and retrieval R@1 equal tools/test.py's on the same images."""
    pytest.importorskip('clip_benchmark', reason='clip_benchmark is installed by '
                        'tools/setup_env.sh: pip install --no-deps clip-benchmark==1.6.2')
    from rils_mm.datasets.demo_shapes import generate_demo_shapes
    _, cfg, _, code, out_dir = exported['rils']
    assert code == 0
    checkpoint = osp.join(osp.dirname(out_dir), 'rils.pth')
    root = str(tmp_path / 'shapes')
    generate_demo_shapes(root, num_train=16, num_val=8, num_heldout=48, image_size=IMG,
                         samples_per_shard=16, seed=0)
    tiny = {f'model.model.{key[len("model."):]}': value
            for key, value in dict(TOWERS, **RILS_NECK).items()}

    # Classification: our zero-shot config's images, labels, class names and templates
    # written in clip_benchmark's layout by the converter ('{}' -> clip_benchmark's '{c}').
    zero_shot = {'model.classnames': f'{root}/classnames.txt',
                 'model.templates': f'{root}/templates.txt',
                 'test_dataloader.num_workers': 0,
                 'test_dataloader.dataset.ann_file': f'{root}/heldout.jsonl',
                 'test_dataloader.dataset.data_prefix.img_path': f'{root}/heldout',
                 'test_dataloader.dataset.pipeline.1.scale': IMG,
                 'test_dataloader.dataset.pipeline.2.crop_size': IMG}
    out = run_tool(CONVERTER, 'configs/rils/demo_cpu_zeroshot.py', tmp_path / 'cls',
                   '--shard-size', '20', '--cfg-options',
                   *[f'{key}={value}' for key, value in zero_shot.items()])
    assert 'wrote' in out and '48 classification samples in 3 shard(s)' in out, out
    assert (tmp_path / 'cls' / 'zeroshot_classification_templates.txt').read_text().startswith(
        open(osp.join(root, 'templates.txt')).readline().replace('{}', '{c}'))
    theirs = clip_benchmark_classification(str(tmp_path / 'cls'), out_dir)
    ours = figures_of_test_tool('configs/rils/demo_cpu_zeroshot.py', dict(tiny, **zero_shot),
                                checkpoint, tmp_path, 'zero_shot')
    assert 0 < theirs[1] < 100  # neither all right nor all wrong: the figure can differ
    assert round(theirs[1], 4) == ours['accuracy/top1']
    assert round(theirs[5], 4) == ours['accuracy/top5']

    # Retrieval: one image per distinct caption (no tied texts), and the same images for
    # tools/test.py as a Karpathy file.
    retrieval = {'test_dataloader.num_workers': 0, 'test_dataloader.dataset.data_root': root}
    out = run_tool(CONVERTER, 'configs/rils/demo_cpu_retrieval.py', tmp_path / 'ret',
                   '--distinct-captions', '--cfg-options',
                   *[f'{key}={value}' for key, value in retrieval.items()])
    heldout = [json.loads(line) for line in open(osp.join(root, 'heldout.jsonl'))]
    distinct = len({item['caption'] for item in heldout})
    assert 1 < distinct < len(heldout)  # some captions repeat: the option drops images
    assert f'{distinct} retrieval samples' in out, out
    theirs = clip_benchmark('zeroshot_retrieval', tmp_path / 'ret', out_dir,
                            tmp_path / 'ret.json')
    import re
    karpathy_file = re.search(r'test_dataloader\.dataset\.ann_file=(\S+)', out).group(1)
    assert karpathy_file == str(tmp_path / 'ret' / 'karpathy_test.json')  # absolute
    ours = figures_of_test_tool('configs/rils/demo_cpu_retrieval.py', dict(
        tiny, **retrieval, **{'test_dataloader.dataset.ann_file': karpathy_file}),
        checkpoint, tmp_path, 'retrieval')
    assert round(theirs['text_retrieval_recall@1'] * 100, 4) == ours[
        'retrieval/image_to_text_R@1']
    assert round(theirs['image_retrieval_recall@1'] * 100, 4) == ours[
        'retrieval/text_to_image_R@1']
    assert round(theirs['image_retrieval_recall@5'] * 100, 4) == ours[
        'retrieval/text_to_image_R@5']


def write_tiny_zero_shot_set(root):
    """Two 8 px images labelled 0 and 3, four class names, and bad inputs beside them: a
    template file with a stray brace, a class-name file too short for label 3, an annotation
    file with a broken line and an empty one, Karpathy files whose second image has no
    sentences or a caption of two lines, a config without test_dataloader, and a file where
    OUT_DIR should be a folder."""
    for name in ('a.png', 'b.png'):
        Image.new('RGB', (8, 8), (200, 30, 30)).save(root / name)
    lines = [json.dumps(dict(filepath=name, caption=f'image {name}', label=label))
             for name, label in (('a.png', 0), ('b.png', 3))]
    (root / 'set.jsonl').write_text('\n'.join(lines) + '\n')
    (root / 'broken.jsonl').write_text(lines[0] + '\n{"filepath": broken\n')
    (root / 'classnames.txt').write_text('red\ngreen\nblue\nblack\n')
    (root / 'short_classnames.txt').write_text('red\ngreen\n')
    (root / 'templates.txt').write_text('a {} shape\n')
    (root / 'open_brace.txt').write_text('a {} shape\na { weird {}\n')
    (root / 'close_brace.txt').write_text('a {} shape\na } weird {}\n')
    images = [dict(filepath=str(root), filename=name, imgid=i, split='test',
                   sentences=[dict(raw='a red shape')] if i == 0 else [])
              for i, name in enumerate(('a.png', 'b.png'))]
    (root / 'no_sentences.json').write_text(json.dumps(dict(images=images)))
    images[1]['sentences'] = [dict(raw='two\nlines')]  # clip_benchmark would read 2 captions
    (root / 'two_lines.json').write_text(json.dumps(dict(images=images)))
    (root / 'empty.jsonl').write_text('')
    (root / 'no_test.py').write_text("model = dict(type='ZeroShotRetriever')\n")
    (root / 'a_file').write_text('')


def tiny_set_options(**overrides):
    """--cfg-options of configs/rils/demo_cpu_zeroshot.py for write_tiny_zero_shot_set's set
    (``{tmp}`` is its folder)."""
    options = {'test_dataloader.dataset.ann_file': '{tmp}/set.jsonl',
               'test_dataloader.dataset.data_prefix.img_path': '{tmp}',
               'model.classnames': '{tmp}/classnames.txt',
               'model.templates': '{tmp}/templates.txt', **overrides}
    return ['--cfg-options', *[f'{key}={value}' for key, value in options.items()]]


ZERO_SHOT = ['configs/rils/demo_cpu_zeroshot.py', '{tmp}/out']
RETRIEVAL = ['configs/rils/demo_cpu_retrieval.py', '{tmp}/out']


@pytest.mark.parametrize('args, words', [
    (['configs/rils/demo_cpu.py', '{tmp}/out'], ["model.type is 'RILS'", 'ZeroShotClassifier',
                                                 'ZeroShotRetriever']),
    ([*ZERO_SHOT, '--distinct-captions'], ['--distinct-captions is for a retrieval config']),
    ([*ZERO_SHOT, '--cfg-options', 'model.class_subset=[1,2]'],
     ['model.class_subset is set', 'has no class_subset']),
    ([*RETRIEVAL, '--cfg-options', 'test_dataloader.dataset.data_root=MISSING'],
     ['test_dataloader.dataset:', 'MISSING']),
    # clip_benchmark fills a template with template.format(c=name): a lone brace breaks it.
    ([*ZERO_SHOT, *tiny_set_options(**{'model.templates': '{tmp}/open_brace.txt'})],
     ['open_brace.txt: template 2', "'a { weird {}'", 'write a literal brace as {{ or }}']),
    ([*ZERO_SHOT, *tiny_set_options(**{'model.templates': '{tmp}/close_brace.txt'})],
     ['close_brace.txt: template 2', "Single '}'"]),
    ([*ZERO_SHOT, *tiny_set_options(**{'model.templates': '{tmp}/missing.txt'})],
     ['model.classnames / model.templates', 'missing.txt is neither a file']),
    ([*ZERO_SHOT, *tiny_set_options(**{'model.classnames': '{tmp}/short_classnames.txt'})],
     ['labels 0..3', 'the 2 names of', 'short_classnames.txt']),
    ([*ZERO_SHOT, *tiny_set_options(**{'test_dataloader.dataset.ann_file': '{tmp}/broken.jsonl'})],
     ['broken.jsonl:2 is not a JSON object']),
    ([*RETRIEVAL, '--cfg-options', 'test_dataloader.dataset.data_root={tmp}',
      'test_dataloader.dataset.ann_file={tmp}/no_sentences.json'],
     ['no_sentences.json', 'b.png has no captions']),
    ([*RETRIEVAL, '--cfg-options', 'test_dataloader.dataset.data_root={tmp}',
      'test_dataloader.dataset.ann_file={tmp}/two_lines.json'],
     ['b.png', "caption 'two\\nlines' is empty or spans lines"]),
    ([*ZERO_SHOT, *tiny_set_options(**{'test_dataloader.dataset.ann_file': '{tmp}/empty.jsonl'})],
     ['(ann_file', 'empty.jsonl)']),
    (['{tmp}/no_test.py', '{tmp}/out'], ['no_test.py has no test_dataloader.dataset']),
    ([ZERO_SHOT[0], '{tmp}/a_file', *tiny_set_options()],
     ['a_file is a file; OUT_DIR must be a folder']),
    # Unwritable for root too (sysfs).
    ([ZERO_SHOT[0], '/sys/rils_mm_out', *tiny_set_options()],
     ['cannot write /sys/rils_mm_out', 'choose another OUT_DIR']),
    ([*ZERO_SHOT, '--shard-size', '-3', *tiny_set_options()],
     ['--shard-size must be at least 1, got -3']),
])
def test_clip_benchmark_converter_refuses_bad_input_in_one_line(args, words, tmp_path):
    write_tiny_zero_shot_set(tmp_path)
    out_dir = tmp_path / 'out'
    result = run_python([sys.executable, CONVERTER, *[arg.replace('{tmp}', str(tmp_path))
                                                      for arg in args]],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith(f'{CONVERTER}: error: ')]
    assert len(errors) == 1 and 'Traceback' not in output, output[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert not (out_dir / 'test' / 'nshards.txt').exists()


def test_clip_benchmark_template_fills_as_ours():
    """Our template filled by str.format(name) (open_clip's build_zero_shot_classifier) and
    its clip_benchmark form filled by .format(c=name) give the same text; escaped braces stay."""
    from rils_mm.tools.clip_benchmark_data import clip_benchmark_template
    for template in ('a photo of a {}.', '{} shape', 'a {{literal}} brace and a {}',
                     'ends {} }}{{'):
        converted = clip_benchmark_template(template)
        assert '{c}' in converted
        assert converted.format(c='red circle') == template.format('red circle')


def test_clip_benchmark_karpathy_file_keeps_remote_paths(tmp_path):
    from rils_mm.tools.clip_benchmark_data import write_karpathy
    write_karpathy(str(tmp_path / 'k.json'), [('s3://bucket/images/a.png', ['a red shape']),
                                              ('images/b.png', ['a blue shape'])])
    images = json.loads((tmp_path / 'k.json').read_text())['images']
    assert (images[0]['filepath'], images[0]['filename']) == ('s3://bucket/images', 'a.png')
    assert images[1]['filepath'] == osp.abspath('images')


def test_clip_benchmark_set_interrupted_can_be_written_again(tmp_path, monkeypatch):
    """test/nshards.txt, which makes a rerun refuse the folder, is written last: a run
    stopped while writing (here: in the Karpathy file) leaves none, and a rerun completes."""
    from rils_mm.tools import clip_benchmark_data
    write_tiny_zero_shot_set(tmp_path)
    images = [dict(filepath=str(tmp_path), filename=name, imgid=i, split='test',
                   sentences=[dict(raw=f'shape {i}')]) for i, name in enumerate(('a.png', 'b.png'))]
    (tmp_path / 'karpathy.json').write_text(json.dumps(dict(images=images)))
    cfg = Config.fromfile(osp.join(REPO, 'configs/rils/demo_cpu_retrieval.py'))
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': str(tmp_path),
                         'test_dataloader.dataset.ann_file': str(tmp_path / 'karpathy.json')})
    out_dir = str(tmp_path / 'out')

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(clip_benchmark_data, 'write_karpathy', interrupted)
        with pytest.raises(KeyboardInterrupt):
            clip_benchmark_data.write_clip_benchmark_set(cfg, 'retrieval config', out_dir,
                                                         distinct_captions=True)
    assert not osp.exists(osp.join(out_dir, 'test', 'nshards.txt'))
    written = clip_benchmark_data.write_clip_benchmark_set(cfg, 'retrieval config', out_dir,
                                                           distinct_captions=True)
    assert (written['num_samples'], written['num_shards']) == (2, 1)
    assert open(osp.join(out_dir, 'test', 'nshards.txt')).read().strip() == '1'
    assert open(osp.join(out_dir, 'dataset_type.txt')).read().strip() == 'retrieval'


def test_clip_benchmark_image_formats(tmp_path):
    """.JPEG goes in as it is (clip_benchmark decodes the lower-case suffix), a BMP as PNG of the
    same pixels; an image PNG cannot hold, or a file that is no image, is refused by name."""
    from rils_mm.tools.arguments import UsageError
    from rils_mm.tools.clip_benchmark_data import image_bytes
    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / 'a.JPEG', format='JPEG')
    Image.fromarray(pixels).save(tmp_path / 'a.bmp')
    Image.new('CMYK', (4, 4)).save(tmp_path / 'cmyk.tif')
    (tmp_path / 'text.bmp').write_text('not an image')
    data, suffix = image_bytes(str(tmp_path / 'a.JPEG'))
    assert (data, suffix) == ((tmp_path / 'a.JPEG').read_bytes(), 'jpeg')
    data, suffix = image_bytes(str(tmp_path / 'a.bmp'))
    assert suffix == 'png' and (np.asarray(Image.open(io.BytesIO(data))) == pixels).all()
    with pytest.raises(UsageError, match=r'cmyk\.tif: cannot re-encode it as PNG'):
        image_bytes(str(tmp_path / 'cmyk.tif'))
    with pytest.raises(UsageError, match=r'text\.bmp: not an image PIL decodes$'):
        image_bytes(str(tmp_path / 'text.bmp'))
