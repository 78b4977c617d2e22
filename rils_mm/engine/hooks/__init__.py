from .bad_sample_hook import BadSampleHook
from .data_resume_hook import DataResumeHook
from .non_finite_check_hook import NonFiniteCheckHook
from .random_state_hook import RandomStateHook
from .remote_checkpoint_hook import RemoteCheckpointHook

__all__ = ['BadSampleHook', 'DataResumeHook', 'NonFiniteCheckHook', 'RandomStateHook',
           'RemoteCheckpointHook']
