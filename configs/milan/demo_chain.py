# The demo CLIP, then MILAN taught by it:
#   python tools/run_chain.py configs/milan/demo_chain.py
stages = [
    dict(name='clip', config='../clip/demo_cpu.py'),
    dict(name='milan', config='./demo_cpu.py', init_key='model.target_generator.checkpoint'),
]
work_dir = 'work_dirs/milan_demo'
