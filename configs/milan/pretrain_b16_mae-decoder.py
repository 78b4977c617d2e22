# MILAN's decoder ablation (Hou et al., 2022, Table 4, row 6 against row 8): MAE's decoder, in
# which the visible tokens are updated by every block too, with the same depth, width and
# target. Everything else is configs/milan/pretrain_b16.py.
#   tools/dist_train.sh configs/milan/pretrain_b16_mae-decoder.py 16
_base_ = ['./pretrain_b16.py']

model = dict(neck=dict(type='MAEFeatureDecoder'))
