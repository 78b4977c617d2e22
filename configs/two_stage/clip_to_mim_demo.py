# CLIP->MIM at demo scale: the demo CLIP, then the demo MAE from its image tower:
#   python tools/run_chain.py configs/two_stage/clip_to_mim_demo.py
stages = [
    dict(name='clip', config='../clip/demo_cpu.py'),
    dict(name='mim', config='./mim_from_clip_demo.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/clip_to_mim_demo'
