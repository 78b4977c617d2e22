# Multi-scale + flip testing of the ViT-L ADE20K UperNet (test only), as the ViT-B -ms config:
# the segmentor wrapped in mmseg's SegTTAModel over the dataset base's tta_pipeline.
_base_ = ['./rils_vit-l16_upernet_8xb2-160k_ade20k-512x512.py']

model = dict(_delete_=True, type='SegTTAModel', module={{_base_.model}})
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
