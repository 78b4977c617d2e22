# RILS reconstructing in a "high-level vision space" (the RILS paper's ablation;
# docs/methods/rils_vision_space.md): the patch distributions are over K fixed random unit
# vectors (drawn once with `seed`, never trained) instead of the batch's captions; everything
# else, the correct-retrieval filter included, is RILS:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/rils/pretrain_b16_vision-space.py 8
_base_ = ['./pretrain_b16.py']

model = dict(
    head=dict(prototypes=dict(_delete_=True, type='RandomPrototypes', num_prototypes=4096,
                              seed=0)))
