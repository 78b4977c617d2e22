# The RILS paper's two-stage baseline MIM->CLIP at the B/16 recipe: MAE on the images of the
# shards, then CLIP with the MAE encoder as its starting image tower. One command runs both
# stages and hands stage 1's last checkpoint to stage 2:
#   python tools/run_chain.py configs/two_stage/mim_to_clip_b16.py [--launcher pytorch ...]
# Each stage writes to <work_dir>/<name>; `init_key` is the config key of stage 2 that receives
# the checkpoint path.
stages = [
    dict(name='mim', config='../mae/pretrain_b16.py'),
    dict(name='clip', config='./clip_from_mim_b16.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/mim_to_clip_b16'
