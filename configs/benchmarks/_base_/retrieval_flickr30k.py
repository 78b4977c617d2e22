# Flickr30K Karpathy 1k test split: data/flickr30k/images/*.jpg and Karpathy's
# data/flickr30k/annotations/dataset_flickr30k.json. 1000 images, 5000 captions.
_base_ = ['./retrieval_coco5k.py']

test_dataloader = dict(
    dataset=dict(
        data_root='data/flickr30k',
        data_prefix='images',
        ann_file='annotations/dataset_flickr30k.json'))
