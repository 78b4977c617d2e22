# Zero-shot ImageNet-Sketch (data/imagenet-sketch/sketch/<wnid>/*.JPEG, 1000 classes).
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

test_dataloader = dict(dataset=dict(data_root='data/imagenet-sketch', data_prefix='sketch'))
