# MIM->CLIP at demo scale: the demo MAE, then the demo CLIP from its encoder:
#   python tools/run_chain.py configs/two_stage/mim_to_clip_demo.py
stages = [
    dict(name='mim', config='../mae/demo_cpu.py'),
    dict(name='clip', config='./clip_from_mim_demo.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/mim_to_clip_demo'
