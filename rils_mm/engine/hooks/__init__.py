from .bad_sample_hook import BadSampleHook
from .data_resume_hook import DataResumeHook
from .fp16_compression_hook import Fp16GradCompressionHook
from .non_finite_check_hook import NonFiniteCheckHook
from .random_state_hook import RandomStateHook
from .remote_checkpoint_hook import RemoteCheckpointHook

__all__ = ['BadSampleHook', 'DataResumeHook', 'Fp16GradCompressionHook', 'NonFiniteCheckHook',
           'RandomStateHook', 'RemoteCheckpointHook']
