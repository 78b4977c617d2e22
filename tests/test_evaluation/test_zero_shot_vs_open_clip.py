"""Our zero-shot classification and retrieval, run through mmengine's Runner with the shipped
configs, against open_clip's own computation on the same model, images, captions, templates."""
import glob
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import open_clip
from rils_mm.datasets.resources import read_lines

CFG_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'benchmarks')
IMG = 32


def _shrink_test_cfg(cfg, work_dir):
    """Tiny images, batch 4, no workers; pipeline sizes to 32 px."""
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = os.path.basename(os.path.dirname(str(work_dir)))  # unique per test
    dl = cfg.test_dataloader
    dl.batch_size, dl.num_workers, dl.persistent_workers = 4, 0, False
    for t in dl.dataset.pipeline:
        if t['type'] == 'ResizeEdge':
            t['scale'] = IMG
        if t['type'] == 'CenterCrop':
            t['crop_size'] = IMG
    cfg.default_hooks.logger.interval = 1
    return cfg


def _open_clip_reference(arch, ckpt):
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=ckpt)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


@torch.no_grad()
def _model_outputs(runner, mode='tensor'):
    """Our wrapper's outputs on the runner's test dataloader (in dataset order)."""
    model = runner.model
    outs = []
    for batch in runner.test_dataloader:
        data = model.data_preprocessor(batch, False)
        outs.append(model(data['inputs'], data['data_samples'], mode=mode))
    return outs


@pytest.mark.parametrize('weights_via', ['pretrained', 'load_from'])
def test_zero_shot_classification_equals_open_clip(tiny_arch, tiny_openclip_ckpt,
                                                   imagenet_subset_folder, tmp_path,
                                                   weights_via):
    """Weights through open_clip's loader (``pretrained=``) or, as a raw open_clip state dict,
    through the Runner (``tools/test.py --checkpoint``)."""
    root, subset = imagenet_subset_folder
    cfg = Config.fromfile(os.path.join(CFG_DIR, 'zero_shot', 'openclip_vit-b16_zeroshot_in1k.py'))
    cfg = _shrink_test_cfg(cfg, tmp_path / 'work')
    if weights_via == 'pretrained':
        cfg.model.model.update(arch='rils-test-tiny-clip', pretrained=tiny_openclip_ckpt)
    else:
        cfg.model.model.update(arch='rils-test-tiny-clip', pretrained=None)
        cfg.load_from = tiny_openclip_ckpt
    cfg.model.update(class_subset=subset, templates='simple_imagenet_templates.txt')
    cfg.test_dataloader.dataset.update(data_root=root, data_prefix='', class_subset=subset)
    cfg.test_evaluator.topk = (1, 2)  # 3 classes
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()

    # open_clip: its own preprocessing, its own template lambdas and class-name list.
    from open_clip import (IMAGENET_CLASSNAMES, SIMPLE_IMAGENET_TEMPLATES,
                           build_zero_shot_classifier)
    from PIL import Image
    model, preprocess, tokenizer = _open_clip_reference('rils-test-tiny-clip',
                                                        tiny_openclip_ckpt)
    wnids = read_lines('imagenet_wnids.txt')
    paths, targets = [], []
    for label, idx in enumerate(subset):
        files = sorted(glob.glob(os.path.join(root, wnids[idx], '*.JPEG')))
        paths += files
        targets += [label] * len(files)
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p)) for p in paths])
        feats = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        classifier = build_zero_shot_classifier(
            model, tokenizer, [IMAGENET_CLASSNAMES[i] for i in subset],
            SIMPLE_IMAGENET_TEMPLATES)
        ref_logits = 100. * feats @ classifier
    # open_clip_train.zero_shot.accuracy's formula (calling it fails on numpy 2.4: it takes
    # float() of a 1-element array).
    top = ref_logits.topk(2, dim=1).indices.t()
    correct = top.eq(torch.tensor(targets).view(1, -1))
    top1, top2 = (float(correct[:k].sum()) for k in (1, 2))

    ours = torch.cat(_model_outputs(runner))
    torch.testing.assert_close(ours, ref_logits, atol=2e-4, rtol=1e-4)
    assert metrics['accuracy/top1'] == pytest.approx(100 * top1 / len(paths))
    assert metrics['accuracy/top2'] == pytest.approx(100 * top2 / len(paths))
    # The scores are not all tied: the comparison above has something to compare.
    assert (ref_logits.max(1).values - ref_logits.min(1).values).min() > 1e-3


def _argsort_recalls(image_feats, text_feats, text_to_image, ks=(1, 5, 10)):
    """open_clip's get_clip_metrics procedure (argsort, position of the ground truth), with
    an image's position taken as that of its best-ranked caption."""
    logits = image_feats @ text_feats.t()
    out = {}
    i2t_rank = torch.argsort(logits, dim=1, descending=True)
    pos = torch.stack([
        torch.where(text_to_image[i2t_rank[i]] == i)[0].min() for i in range(len(image_feats))])
    t2i_rank = torch.argsort(logits.t(), dim=1, descending=True)
    pos_t = torch.where(t2i_rank == text_to_image.view(-1, 1))[1]
    for name, p in (('image_to_text', pos), ('text_to_image', pos_t)):
        p = p.numpy()
        for k in ks:
            out[f'{name}_R@{k}'] = 100 * float(np.mean(p < k))
        out[f'{name}_mean_rank'] = float(p.mean() + 1)
        out[f'{name}_median_rank'] = float(np.floor(np.median(p)) + 1)
    return out


@pytest.mark.parametrize('captions_per_image', [1, 2])
def test_zero_shot_retrieval_equals_open_clip(tiny_arch, tiny_openclip_ckpt, karpathy_split,
                                              tmp_path, captions_per_image):
    import json
    ann = json.load(open(karpathy_split['ann_file']))
    for img in ann['images']:
        img['sentences'] = img['sentences'][:captions_per_image]
    ann_file = tmp_path / 'split.json'
    ann_file.write_text(json.dumps(ann))

    cfg = Config.fromfile(os.path.join(CFG_DIR, 'retrieval',
                                       'openclip_vit-b16_zeroshot-retrieval_flickr30k.py'))
    cfg = _shrink_test_cfg(cfg, tmp_path / 'work')
    cfg.test_dataloader.batch_size = 2  # images of one query split across batches
    cfg.model.model.update(arch='rils-test-tiny-clip', pretrained=tiny_openclip_ckpt)
    cfg.test_dataloader.dataset.update(data_root=karpathy_split['root'], data_prefix='images',
                                       ann_file=str(ann_file))
    metrics = Runner.from_cfg(cfg).test()

    from PIL import Image
    model, preprocess, tokenizer = _open_clip_reference('rils-test-tiny-clip',
                                                        tiny_openclip_ckpt)
    test_imgs = [i for i in ann['images'] if i['split'] == 'test']
    captions = [s['raw'] for i in test_imgs for s in i['sentences']]
    text_to_image = torch.tensor([n for n, i in enumerate(test_imgs) for _ in i['sentences']])
    with torch.no_grad():
        images = torch.stack([
            preprocess(Image.open(os.path.join(karpathy_split['root'], 'images', i['filename'])))
            for i in test_imgs])
        out = dict(image_features=model.encode_image(images, normalize=True),
                   text_features=model.encode_text(tokenizer(captions), normalize=True),
                   logit_scale=model.logit_scale.exp())
    if captions_per_image == 1:
        from open_clip_train.train import get_clip_metrics
        ref = get_clip_metrics(out['image_features'], out['text_features'], out['logit_scale'])
        ref = {k: 100 * float(v) if '_R@' in k else float(v) for k, v in ref.items()}
    else:
        ref = _argsort_recalls(out['image_features'], out['text_features'], text_to_image)
    assert metrics == pytest.approx({f'retrieval/{k}': v for k, v in ref.items()})
    assert len(metrics) == 10
