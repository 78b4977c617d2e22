"""Any open_clip model behind the image-text API of rils_mm's pretrainers.

``OpenCLIPModel`` gives an open_clip architecture (random, or with weights from a local file)
the same ``encode_image`` / ``encode_text`` / ``logit_scale`` / ``data_preprocessor`` as our
``ImageTextPretrainer``/``RILS``, so that every zero-shot config evaluates either::

    model = dict(type='ZeroShotClassifier',
                 model=dict(type='OpenCLIPModel', arch='ViT-B-16',
                            pretrained='checkpoints/open_clip_vit_b16_laion2b.pt'))

Weights are loaded by open_clip itself (``open_clip.create_model(arch, pretrained=<file>)``,
including its conversions of OpenAI, timm and big_vision formats); a ``pretrained`` value that
is not an existing file is refused instead of being treated as a hub tag, so nothing is ever
downloaded.
"""
import os.path as osp
import tempfile
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmpretrain.registry import MODELS

from rils_mm.compat import CheckpointLoadError, weights_only_load

__all__ = ['OpenCLIPModel']


def _is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's released CLIP files are).

    The test is torch's own (``torch.serialization._is_torchscript_zip``): a ``constants.pkl``
    record. Such files are loaded with ``torch.jit.load``, whose unpickler builds TorchScript
    types only and never imports or calls Python objects; everything else is loaded
    weights-only, so a ``torch.save`` file dressed up with a ``code/`` folder gains nothing.
    """
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') or name == 'constants.pkl'
                   for name in archive.namelist())


def _torchscript_to_state_dict_file(path: str, folder: str) -> str:
    """Save the weights of a TorchScript archive as a plain state dict file in ``folder``."""
    try:
        scripted = torch.jit.load(path, map_location='cpu')
    except RuntimeError as err:
        reason = ' '.join(str(err).split())[:200]
        raise CheckpointLoadError(f'OpenCLIPModel: {path} looks like a TorchScript archive '
                                  f'but torch.jit.load cannot read it: {reason}') from None
    # OpenAI's archives keep these scalars beside the weights, and TorchScript also saves the
    # causal attention mask that the model rebuilds (a non-persistent buffer in open_clip).
    state_dict = {key: value for key, value in scripted.state_dict().items()
                  if key not in ('input_resolution', 'context_length', 'vocab_size')
                  and not key.endswith('attn_mask')}
    out = osp.join(folder, 'state_dict.pt')
    torch.save(state_dict, out)
    return out


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
            loaded with ``torch.load(weights_only=True)``, TorchScript archives (OpenAI's
            releases) with ``torch.jit.load``, which unpickles no Python objects.
        tokenizer (str, optional): open_clip name of the tokenizer to use; defaults to
            ``arch``'s.
        data_preprocessor (dict, optional): Defaults to ``RILSDataPreprocessor`` with the
            model's own mean/std on the 0-255 scale and ``to_rgb=True`` (mmpretrain loads BGR).
        init_cfg (dict, optional): Unused; weights come from ``pretrained``.
    """

    def __init__(self,
                 arch: str,
                 pretrained: Optional[str] = None,
                 model_cfg_path: Optional[str] = None,
                 weights_only: bool = True,
                 tokenizer: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
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
                             'could run code when unpickled. TorchScript archives are '
                             'detected and loaded with torch.jit.load.')
        with tempfile.TemporaryDirectory() as folder:
            weights = pretrained
            if pretrained is not None and _is_torchscript_archive(pretrained):
                weights = _torchscript_to_state_dict_file(pretrained, folder)
            elif pretrained is not None and not pretrained.endswith(('.npz', '.npy',
                                                                     '.safetensors')):
                # Our loader first, so that refusals and damaged files are one clear line;
                # open_clip then loads the same file weights-only for its conversions.
                weights_only_load(pretrained, 'cpu')
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
