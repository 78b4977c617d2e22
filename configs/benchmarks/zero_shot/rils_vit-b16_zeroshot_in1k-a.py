# Zero-shot ImageNet-A (data/imagenet-a/<wnid>/*.jpg, 200 classes): the classifier scores
# the 200 classes of the shipped index list, label k = k-th index (the folders' sorted order).
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

class_subset = 'imagenet_a_indices.txt'
model = dict(class_subset=class_subset)
test_dataloader = dict(
    dataset=dict(data_root='data/imagenet-a', data_prefix='', class_subset=class_subset))
