# The CPU demo (configs/rils/demo_cpu.py) sharded by FSDP over gloo processes, the CPU check of
# the L/16 FSDP config's strategy (tests/test_engine/test_sharded_training.py):
#   tools/dist_train.sh configs/sharded/rils_demo_cpu_fsdp.py 2
_base_ = ['../rils/demo_cpu.py']

runner_type = 'FlexibleRunner'
strategy = dict(type='RILSFSDPStrategy', activation_checkpointing=True)
