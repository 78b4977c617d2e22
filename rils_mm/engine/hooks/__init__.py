from .bad_sample_hook import BadSampleHook
from .data_resume_hook import DataResumeHook

__all__ = ['BadSampleHook', 'DataResumeHook']
