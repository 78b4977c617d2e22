# The RILS paper's two-stage baseline CLIP->MIM at the B/16 recipe: CLIP, then MAE starting
# from the CLIP image tower:
#   python tools/run_chain.py configs/two_stage/clip_to_mim_b16.py
stages = [
    dict(name='clip', config='../clip/pretrain_b16.py'),
    dict(name='mim', config='./mim_from_clip_b16.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/clip_to_mim_b16'
