# A cheaper RILS after FLIP (Li et al., CVPR 2023, "Scaling Language-Image Pre-training via
# Masking"): the intact pass encodes a random half of the patches (FLIP's 0.5) and gives the
# contrastive embedding from them; the masked pass sees half of that half, drawn from the same
# per-sample scores (a quarter of the image, 49 patches, as RILS's 75 % masking leaves), and
# the decoder reconstructs, in language space, the 49 patches the intact pass saw and the
# masked pass did not. Evaluation encodes every patch. Everything else is pretrain_b16.py.
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/rils/pretrain_b16_flip.py 8
# Then, optionally, FLIP's short unmasked phase: configs/rils/pretrain_b16_flip_unmasked.py
# (or both in one command: python tools/run_chain.py configs/rils/flip_chain_b16.py).
_base_ = ['./pretrain_b16.py']

model = dict(intact_keep_ratio=0.5, backbone=dict(mask_ratio=0.5))
