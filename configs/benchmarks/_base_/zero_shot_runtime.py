# Runtime of the zero-shot evaluations (test only): mmpretrain's default runtime, our modules.
# mmengine resolves `mmpretrain::` to the configs installed with the mmpretrain wheel
# (<site-packages>/mmpretrain/.mim/configs); it needs pkg_resources (setuptools < 81).
_base_ = ['mmpretrain::_base_/default_runtime.py']

default_scope = 'mmpretrain'
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

test_cfg = dict(type='TestLoop')
