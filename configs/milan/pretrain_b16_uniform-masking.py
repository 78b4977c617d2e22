# MILAN's masking ablation (Hou et al., 2022, Table 4, row 7 against row 8): MAE's uniform
# random masking instead of the semantic-aware draw; the teacher still gives the targets.
# Everything else is configs/milan/pretrain_b16.py.
#   tools/dist_train.sh configs/milan/pretrain_b16_uniform-masking.py 16
_base_ = ['./pretrain_b16.py']

model = dict(target_generator=dict(masking='uniform'))
