# Zero-shot ImageNet-R (data/imagenet-r/<wnid>/*.jpg, 200 classes), as ImageNet-A.
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

class_subset = 'imagenet_r_indices.txt'
model = dict(class_subset=class_subset)
test_dataloader = dict(
    dataset=dict(data_root='data/imagenet-r', data_prefix='', class_subset=class_subset))
