# The cheaper RILS, then its unmasked phase, each stage in its own process:
#   python tools/run_chain.py configs/rils/flip_chain_b16.py
stages = [
    dict(name='flip', config='./pretrain_b16_flip.py'),
    dict(name='unmasked', config='./pretrain_b16_flip_unmasked.py',
         init_key='model.init_cfg.checkpoint'),
]
work_dir = 'work_dirs/rils_flip_b16'
