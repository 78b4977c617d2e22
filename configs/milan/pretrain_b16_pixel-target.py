# MILAN's target ablation (Hou et al., 2022, Table 4, row 5 against row 8): the prompting
# decoder and the semantic-aware masking, but MAE's target: the normalised pixels of the masked
# patches, MSE over the masked patches only. The teacher only draws the masks. Everything else
# is configs/milan/pretrain_b16.py. The other rows combine the three switches:
#   row 3 (prompting decoder only): this config with model.target_generator=None;
#   row 4 (semantic masking only): this config with model.neck.type=MAEFeatureDecoder.
#   tools/dist_train.sh configs/milan/pretrain_b16_pixel-target.py 16
_base_ = ['./pretrain_b16.py']

model = dict(
    type='PixelTargetMILAN',
    neck=dict(predict_feature_dim=16 * 16 * 3),
    head=dict(_delete_=True, type='MAEPretrainHead', norm_pix=True, patch_size=16,
              loss=dict(type='PixelReconstructionLoss', criterion='L2')))
