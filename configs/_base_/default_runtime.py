# Runtime shared by rils_mm's pretraining configs (mmpretrain's scope, our modules imported).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo when no GPU is present.
    dist_cfg=dict(backend='nccl'),
)

# Where the logged scalars (losses, lr, metrics) go. LocalVisBackend writes
# <work_dir>/<timestamp>/vis_data/scalars.json, which tools/analysis_tools/plot_curves.py draws.
# TensorBoard as well (pip install 'rils_mm[tensorboard]'), one switch on the command line:
#   python tools/train.py CONFIG \
#       --cfg-options visualizer.vis_backends=[LocalVisBackend,TensorboardVisBackend]
#   tensorboard --logdir work_dirs/CONFIG_NAME   # event files in <timestamp>/vis_data/
# or Weights & Biases (pip install 'rils_mm[wandb]'; `wandb login`, or WANDB_MODE=offline):
#       --cfg-options visualizer.vis_backends=[LocalVisBackend,WandbVisBackend]
# (tools/train.py turns the names into dict(type=NAME); in a config, set the list of dicts on
# `visualizer.vis_backends`, which is what the Runner reads, e.g. with WandbVisBackend's
# init_kwargs=dict(project='rils')). docs/usage.md.
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed=True)
log_processor = dict(window_size=10)
