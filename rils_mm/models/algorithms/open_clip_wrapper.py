"""Any open_clip model behind the image-text API of rils_mm's pretrainers.

``OpenCLIPModel`` gives an open_clip architecture (random, or with weights from a local file)
the same ``encode_image`` / ``encode_text`` / ``logit_scale`` / ``data_preprocessor`` as our
``ImageTextPretrainer``/``RILS``, so that every zero-shot config evaluates either::

    model = dict(type='ZeroShotClassifier',
                 model=dict(type='OpenCLIPModel', arch='ViT-B-16',
                            pretrained='checkpoints/open_clip_vit_b16_laion2b.pt'))

Weights are loaded by open_clip itself (``open_clip.create_model(arch, pretrained=<file>)``,
including its conversions of OpenAI, timm and big_vision formats), weights-only; a
``pretrained`` value that is not an existing file is refused instead of being treated as a hub
tag, so nothing is ever downloaded. A TorchScript archive (OpenAI's releases) is not given to
``torch.jit.load``, which runs code from the file: its weights are read by
:func:`rils_mm.compat.torchscript_state_dict`, which runs nothing, and then loaded as a state
dict.
"""
import os.path as osp
import tempfile
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmpretrain.registry import MODELS

from rils_mm.compat import (CheckpointLoadError, UnsafeCheckpointError, is_torchscript_archive,
                            torchscript_state_dict, weights_only_load)

__all__ = ['OpenCLIPModel', 'torchscript_clip_state_dict', 'OPENAI_SCALARS']


# OpenAI's archives keep these scalars beside the weights (open_clip drops them too).
OPENAI_SCALARS = ('input_resolution', 'context_length', 'vocab_size')


def torchscript_clip_state_dict(path: str, trust_torchscript: bool = False) -> dict:
    """The CLIP weights of a TorchScript archive (OpenAI's releases, scripted open_clip models).

    Read by :func:`rils_mm.compat.torchscript_state_dict`, which runs nothing from the file,
    unless ``trust_torchscript`` is True: then ``torch.jit.load`` loads it, running the
    archive's ``__setstate__`` code.

    Args:
        path (str): The archive.
        trust_torchscript (bool): Load with ``torch.jit.load`` (only for a file from a source
            you trust). Defaults to False.

    Returns:
        dict: The state dict without OpenAI's scalars (:data:`OPENAI_SCALARS`) and the causal
        ``attn_mask`` that TorchScript saves and the model rebuilds (a non-persistent buffer in
        open_clip).

    Raises:
        CheckpointLoadError: Refused (it needs code to run) or damaged; one line naming the file.
    """
    if trust_torchscript:
        try:
            state_dict = torch.jit.load(path, map_location='cpu').state_dict()
        except RuntimeError as err:
            reason = ' '.join(str(err).split())[:200]
            raise CheckpointLoadError(f'{path} looks like a TorchScript archive but '
                                      f'torch.jit.load cannot read it: {reason}') from None
    else:
        state_dict = torchscript_state_dict(path)
    return {key: value for key, value in state_dict.items()
            if key not in OPENAI_SCALARS and not key.endswith('attn_mask')}


def _weights_for_open_clip(pretrained: Optional[str], folder: str,
                           trust_torchscript: bool) -> Optional[str]:
    """The file open_clip is to load: ``pretrained`` itself, checked by our loader (so that
    refusals and damaged files are one clear line; open_clip then loads it weights-only for
    its conversions), or the weights of a TorchScript archive saved in ``folder`` as a plain
    state dict."""
    if pretrained is None:
        return None
    if not is_torchscript_archive(pretrained):
        if not pretrained.endswith(('.npz', '.npy', '.safetensors')):
            weights_only_load(pretrained, 'cpu')
        return pretrained
    try:
        state_dict = torchscript_clip_state_dict(pretrained, trust_torchscript)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f'{err} (OpenCLIPModel(trust_torchscript=True) would load it with torch.jit.load, '
            f'running that code: only for a file from a source you trust)') from None
    weights = osp.join(folder, 'state_dict.pt')
    torch.save(state_dict, weights)
    return weights


@MODELS.register_module()
class OpenCLIPModel(BaseModel):
    """An open_clip CLIP model with rils_mm's image-text model interface.

    Args:
        arch (str): open_clip model name (``'ViT-B-16'``, ``'ViT-B-16-quickgelu'`` for OpenAI
            weights, ...) or ``'local-dir:/path'`` holding ``open_clip_config.json`` and
            weights.
        pretrained (str, optional): Local checkpoint file (open_clip training checkpoint,
            OpenAI TorchScript archive, ``.safetensors``, big_vision ``.npz``). None: random
            weights.
        model_cfg_path (str, optional): A JSON model config file or folder to register with
            ``open_clip.add_model_config`` first, for architectures open_clip does not ship.
        weights_only (bool): Must stay True (kept for config compatibility): files are
            loaded with ``torch.load(weights_only=True)``; the weights of TorchScript archives
            (OpenAI's releases) are read without running anything from them
            (:func:`torchscript_clip_state_dict`).
        tokenizer (str, optional): open_clip name of the tokenizer to use; defaults to
            ``arch``'s.
        data_preprocessor (dict, optional): Defaults to ``RILSDataPreprocessor`` with the
            model's own mean/std on the 0-255 scale and ``to_rgb=True`` (mmpretrain loads BGR).
        init_cfg (dict, optional): Unused; weights come from ``pretrained``.
        trust_torchscript (bool): Load a TorchScript ``pretrained`` with ``torch.jit.load``
            instead, which runs the archive's code (each scripted class's ``__setstate__``;
            such code can read and write any file). Only for an archive from a source you
            trust that the reader refuses; no shipped config sets it. Defaults to False.
    """

    def __init__(self,
                 arch: str,
                 pretrained: Optional[str] = None,
                 model_cfg_path: Optional[str] = None,
                 weights_only: bool = True,
                 tokenizer: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 trust_torchscript: bool = False) -> None:
        import open_clip
        if model_cfg_path is not None:
            open_clip.add_model_config(model_cfg_path)
        if pretrained is not None:
            pretrained = osp.expanduser(pretrained)
            if not osp.isfile(pretrained):
                raise FileNotFoundError(
                    f'OpenCLIPModel: pretrained={pretrained!r} is not a file. Only local files '
                    'are loaded (no hub tags); download the weights first.')
        if not weights_only:
            raise ValueError('OpenCLIPModel: weights_only=False is not supported: a checkpoint '
                             'could run code when unpickled. The weights of TorchScript '
                             'archives are read without running them.')
        with tempfile.TemporaryDirectory() as folder:
            weights = _weights_for_open_clip(pretrained, folder, trust_torchscript)
            clip = open_clip.create_model(arch, pretrained=weights, weights_only=True,
                                          device='cpu')
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        if data_preprocessor is None:
            data_preprocessor = dict(
                type='RILSDataPreprocessor',
                mean=[255 * m for m in preprocess['mean']],
                std=[255 * s for s in preprocess['std']],
                to_rgb=True)
        if isinstance(data_preprocessor, dict):
            # Built from mmpretrain's registry so that no default scope is needed.
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.clip = clip
        self.arch = arch
        self.pretrained = pretrained
        self.preprocess_cfg = preprocess
        self.tokenizer_name = tokenizer or arch
        # Raw open_clip state dicts (``visual.*``, ``text.*``, ``logit_scale``) given to the
        # Runner (tools/test.py --checkpoint) would otherwise match nothing, silently.
        self._register_load_state_dict_pre_hook(self._add_clip_prefix)

    @staticmethod
    def _add_clip_prefix(state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if not rest.startswith(('clip.', 'data_preprocessor.')):
                state_dict[prefix + 'clip.' + rest] = state_dict.pop(key)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learnable log logit scale (scalar), as in ``ImageTextPretrainer``."""
        return self.clip.logit_scale

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """Token ids ``B x L`` of ``texts`` with the architecture's tokenizer."""
        import open_clip
        if not hasattr(self, '_tokenizer'):
            self._tokenizer = open_clip.get_tokenizer(self.tokenizer_name)
        return self._tokenizer(texts)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x 3 x H x W, normalised by the data preprocessor -> B x D, unit norm."""
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: B x L token ids -> B x D, unit norm."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def extract_feat(self, images: Union[torch.Tensor, dict]) -> tuple:
        """The image tower's output (pooled, projected, not normalised): a 1-tuple of B x D."""
        images = images['images'] if isinstance(images, dict) else images
        return (self.clip.encode_image(images), )

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        """``mode='tensor'``: image embeddings ``B x D`` (or a dict with ``texts`` too).

        Evaluation goes through ``ZeroShotClassifier``/``ZeroShotRetriever``; training an
        open_clip model is open_clip's job, so ``'loss'`` and ``'predict'`` are refused.
        """
        if mode != 'tensor':
            raise NotImplementedError(
                f'OpenCLIPModel supports mode="tensor" only (got "{mode}"); wrap it in '
                'ZeroShotClassifier or ZeroShotRetriever to evaluate it.')
        if isinstance(inputs, dict):
            out = dict(images=self.encode_image(inputs['images']))
            if inputs.get('texts') is not None:
                out['texts'] = self.encode_text(inputs['texts'])
            return out
        return self.encode_image(inputs)
