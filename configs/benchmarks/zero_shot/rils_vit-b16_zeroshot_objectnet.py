# Zero-shot ObjectNet (data/objectnet-1.0/{images,mappings}): the 113 classes that map to
# ImageNet, each scored by its best ImageNet class (the mapping files ship with ObjectNet);
# the 1-pixel red frame is cropped first (2 pixels, as WiSE-FT's loader).
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

objectnet_root = 'data/objectnet-1.0'
model = dict(class_groups=objectnet_root + '/mappings')
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ObjectNet',
        data_root=objectnet_root,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='CropBorder', pixels=2),
            dict(type='ResizeEdge', scale=224, edge='short', backend='pillow',
                 interpolation='bicubic'),
            dict(type='CenterCrop', crop_size=224),
            dict(type='PackInputs'),
        ]))
