# Multi-scale + flip testing of the ADE20K UperNet (test only): mmseg's TTA, as its
# `tools/test.py --tta` runs it (the -ms configs of mmseg 1.x only change the resize): the
# segmentor wrapped in SegTTAModel, which averages the predictions of the dataset base's
# tta_pipeline (scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 of 2048 x 512, each with and without a
# horizontal flip; sliding 512 x 512 windows at each).
#   python tools/test.py configs/upernet/rils_vit-b16_upernet_8xb2-160k_ade20k-512x512-ms.py CKPT
_base_ = ['./rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py']

model = dict(_delete_=True, type='SegTTAModel', module={{_base_.model}})
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
