# MIM->LiT ViT-B/16 (the RILS paper's two-stage baseline): MAE on the images of the shards,
# then LiT with the MAE encoder locked and the text tower from scratch:
#   python tools/run_chain.py configs/two_stage/mim_to_lit_b16.py
stages = [
    dict(name='mim', config='../mae/pretrain_b16.py'),
    dict(name='lit', config='../lit/lit_b16_L-scratch.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/mim_to_lit_b16'
