# Zero-shot ImageNet-1k top-1/top-5 of RILS ViT-B/16:
#   python tools/test.py configs/benchmarks/zero_shot/rils_vit-b16_zeroshot_in1k.py \
#       --checkpoint work_dirs/rils_vit-b16_laion20m/epoch_25.pth
# Class names and the 80 OpenAI templates ship in rils_mm/datasets/data; prompt ensembling
# and scoring are open_clip's (build_zero_shot_classifier, 100 * cos).
_base_ = [
    '../_base_/zero_shot_runtime.py',
    '../_base_/zero_shot_rils_vit-b16.py',
    '../_base_/imagenet_zero_shot.py',
]

model = dict(
    _delete_=True,
    type='ZeroShotClassifier',
    model={{_base_.model}},
    classnames={{_base_.classnames}},
    templates={{_base_.templates}},
    class_subset={{_base_.class_subset}},
    logit_scale=100.)
