# MIM->LiT at demo scale (the RILS paper's two-stage baseline): the demo MAE, then LiT with its
# encoder locked and the text tower from scratch:
#   python tools/run_chain.py configs/two_stage/mim_to_lit_demo.py
stages = [
    dict(name='mim', config='../mae/demo_cpu.py'),
    dict(name='lit', config='../lit/demo_cpu_L-scratch.py',
         init_key='model.backbone.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/mim_to_lit_demo'
