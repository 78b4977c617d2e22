# Zero-shot image<->text retrieval (R@1/5/10 both ways) of RILS ViT-B/16, flickr30k test split:
#   python tools/test.py configs/benchmarks/retrieval/rils_vit-b16_zeroshot-retrieval_flickr30k.py \
#       --checkpoint work_dirs/rils_vit-b16_laion20m/epoch_25.pth
# Ranks as open_clip's get_clip_metrics; an image is retrieved at K when any of its captions is.
_base_ = [
    '../_base_/zero_shot_runtime.py',
    '../_base_/zero_shot_rils_vit-b16.py',
    '../_base_/retrieval_flickr30k.py',
]

model = dict(_delete_=True, type='ZeroShotRetriever', model={{_base_.model}})
