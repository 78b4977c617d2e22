# The demo's cheaper RILS, then one unmasked epoch:
#   python tools/run_chain.py configs/rils/demo_flip_chain.py
stages = [
    dict(name='flip', config='./demo_cpu_flip.py'),
    dict(name='unmasked', config='./demo_cpu_flip_unmasked.py',
         init_key='model.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/rils_flip_demo'
