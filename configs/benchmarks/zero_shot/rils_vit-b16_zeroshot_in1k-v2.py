# Zero-shot ImageNetV2 matched-frequency (folders named 0..999 by label, as released).
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetV2',
        data_root='data/imagenetv2-matched-frequency-format-val',
        pipeline={{_base_.test_pipeline}}))
