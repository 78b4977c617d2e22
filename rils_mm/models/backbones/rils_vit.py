"""The RILS vision encoder: a plain ViT with an intact and masked passes.

One set of modules (one checkpoint layout), one class per ``forward`` contract, as mmpretrain's
``MAEViT`` and ``MILANViT`` subclass its ``VisionTransformer``:

- ``RILSViT``: the transfer form. ``forward(x)`` is the intact pass; mmpretrain classifiers,
  mmdet and mmseg take it with ``out_indices``/``out_type`` as in mmpretrain's
  ``VisionTransformer`` (position embeddings interpolated to any input size). For detection,
  optional ViTDet-style blocks: windowed attention in all but a few global blocks and
  decomposed relative position bias; the output is then the patch-token grid.
- ``RILSMaskedViT``: ``MAEViT``'s contract, MAE's uniform masking (MAE, MAE+CLIP, CLIP's
  image tower).
- ``RILSMILANViT``: ``MILANViT``'s contract, patches kept by importance (MILAN).
- ``RILSMultiPassViT``: RILS's intact and masked passes over one patch embedding.
- ``RILSPretrainViT``: the name older configs use; it accepts all the calls above.

The pretraining forms give the intact pass when their masking argument is None
(:func:`intact_outputs`).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule, ModuleList
from mmpretrain.models.selfsup.mae import MAEViT
from mmpretrain.models.utils import build_norm_layer, resize_pos_embed
from mmpretrain.registry import MODELS

from ..utils import QVBiasTransformerLayer, block_groups, checked_init_cfg, loads_pretrained

# mmcv's model zoos that toolbox base configs name in ``pretrained`` (CNN weights, e.g. mmseg's
# 'open-mmlab://resnet50_v1c'); none of them holds a RILS encoder.
_CNN_MODEL_ZOOS = ('open-mmlab://', 'torchvision://')


def pretrained_to_init_cfg(pretrained: Optional[str],
                           init_cfg: Optional[Union[dict, list]]) -> Optional[Union[dict, list]]:
    """The ``init_cfg`` that the toolboxes' ``pretrained`` argument stands for.

    mmseg's segmentors set ``backbone.pretrained = model.pretrained``, and mmseg's own ViT and
    MAE backbones read ``pretrained=PATH`` as ``init_cfg=dict(type='Pretrained',
    checkpoint=PATH)`` and refuse it together with ``init_cfg``. Here ``PATH`` is loaded with the
    checked loader from its ``backbone.*`` keys (the converter's output or a pretraining
    checkpoint), so a file without them fails instead of leaving the encoder random.

    Args:
        pretrained (str, optional): Checkpoint path or URL, or None.
        init_cfg (dict | list, optional): The backbone's own ``init_cfg``.

    Returns:
        dict | list | None: ``init_cfg`` unchanged if ``pretrained`` is None, else a
        ``CheckedPretrained`` config with ``prefix='backbone.'``.
    """
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'RILSViT: pretrained must be a checkpoint path or None, '
                        f'got {pretrained!r}')
    if init_cfg:
        raise ValueError(f'RILSViT: pretrained={pretrained!r} and init_cfg are both set; give '
                         f'one (in an mmseg config set model.pretrained=None: the segmentor '
                         f'passes it to the backbone)')
    if pretrained.startswith(_CNN_MODEL_ZOOS):
        raise ValueError(f'RILSViT: pretrained={pretrained!r} names CNN weights of mmcv\'s model '
                         f'zoo, not a RILS encoder; in an mmseg config set model.pretrained=None '
                         f'(the segmentor passes it to the backbone) and load the encoder with '
                         f'init_cfg')
    return dict(type='CheckedPretrained', checkpoint=pretrained, prefix='backbone.')


@MODELS.register_module()
class RILSViT(MAEViT):
    """ViT with BEiT-form q/v attention bias, fixed 2-D sin-cos positions and MAE masking.

    Differences from mmpretrain's ``MAEViT``: attention has q/v bias and no k bias; the masked
    pass keeps exactly ``round(L * (1 - mask_ratio))`` patches; ``forward`` is the intact
    pass (so the class can be dropped into classifiers and detectors); the masked passes are
    methods here and the ``forward`` of the pretraining subclasses; optional gradient
    checkpointing per block.

    Args:
        arch (str | dict): ViT size, as in ``VisionTransformer`` ('b', 'l', ... or a dict with
            embed_dims, num_layers, num_heads, feedforward_channels).
        img_size (int | tuple): Pretraining image size; the fixed position table is built for
            it and interpolated for other sizes.
        patch_size (int): Patch size. Defaults to 16.
        out_indices (Sequence[int] | int): Blocks whose output the intact pass returns.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        norm_cfg (dict): Norm layer config. Defaults to LayerNorm with eps 1e-6.
        final_norm (bool): Apply the final LayerNorm after the last block. Defaults to True.
        out_type (str): Intact-pass output format ('raw', 'cls_token', 'featmap',
            'avg_featmap'), as in ``VisionTransformer``. Defaults to 'raw'.
        mask_ratio (float): Fraction of patches removed in the masked pass, in (0, 1).
        qv_bias (bool): Learn q and v attention biases. Defaults to True.
        with_cp (bool): Gradient checkpointing in every block. Defaults to False.
        frozen_stages (int): Freeze the patch embedding and the first ``frozen_stages``
            blocks (linear probing: all of them). Defaults to -1 (nothing frozen).
        pre_norm (bool): A LayerNorm after adding the positions, before the first block, and
            no patch-embedding bias (CLIP's ``ln_pre``; for imported CLIP encoders).
            Defaults to False.
        window_size (int): ViTDet: window size (in patches) of the windowed blocks; 0 disables
            windowing. Defaults to 0.
        window_block_indexes (Sequence[int]): ViTDet: blocks that attend within windows; the
            others attend globally, e.g. all but (2, 5, 8, 11) for ViT-B. With windowed or
            relative-position blocks the class token is dropped (and frozen), as in ViTDet,
            and the outputs hold the patch tokens only. Defaults to ().
        use_rel_pos (bool): ViTDet: decomposed relative position bias in every block (tables
            ``layers.N.attn.rel_pos_h/w``, zero-initialised, absent from pretraining
            checkpoints). Defaults to False.
        rel_pos_size (int | tuple, optional): Token grid the global blocks' relative tables are
            built for; defaults to the grid of ``img_size``.
        fixed_pos_embed (bool): Keep the sin-cos position table fixed (pretraining). False
            trains it, as ViTDet and mmseg's BEiT/MAE fine-tuning do. Defaults to True.
        layer_cfgs (dict | Sequence[dict]): Extra per-block arguments.
        pretrained (str, optional): The toolboxes' older way to name a checkpoint (mmseg's
            segmentors pass ``model.pretrained`` here): ``PATH`` means
            ``init_cfg=dict(type='CheckedPretrained', checkpoint=PATH, prefix='backbone.')``.
            Not together with ``init_cfg``; model-zoo CNN names ('open-mmlab://...') are
            refused. Defaults to None.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'b',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 out_indices: Union[Sequence[int], int] = -1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True,
                 out_type: str = 'raw',
                 interpolate_mode: str = 'bicubic',
                 patch_cfg: dict = dict(),
                 layer_cfgs: Union[dict, Sequence[dict]] = dict(),
                 mask_ratio: float = 0.75,
                 qv_bias: bool = True,
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 pre_norm: bool = False,
                 window_size: int = 0,
                 window_block_indexes: Sequence[int] = (),
                 use_rel_pos: bool = False,
                 rel_pos_size: Optional[Union[int, Tuple[int, int]]] = None,
                 fixed_pos_embed: bool = True,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        init_cfg = checked_init_cfg(pretrained_to_init_cfg(pretrained, init_cfg))
        if not 0 < mask_ratio < 1:
            raise ValueError(f'RILSViT: mask_ratio must be in (0, 1), got {mask_ratio}')
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if pre_norm:
            patch_cfg = dict(dict(bias=False), **patch_cfg)  # as mmpretrain's pre_norm ViT
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            out_indices=list(out_indices),
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            norm_cfg=norm_cfg,
            final_norm=final_norm,
            out_type=out_type,
            interpolate_mode=interpolate_mode,
            patch_cfg=patch_cfg,
            mask_ratio=mask_ratio,
            init_cfg=init_cfg)
        # Rebuild the blocks with q/v-bias attention (VisionTransformer hard-codes its layer
        # class); same stochastic-depth schedule.
        if pre_norm:
            self.pre_norm = build_norm_layer(norm_cfg, self.embed_dims)
        self.pos_embed.requires_grad = not fixed_pos_embed  # MAEViT fixes it
        if isinstance(layer_cfgs, dict):
            layer_cfgs = [layer_cfgs] * self.num_layers
        if window_block_indexes and window_size <= 0:
            raise ValueError('RILSViT: window_block_indexes needs window_size > 0')
        window_block_indexes = [i % self.num_layers for i in window_block_indexes]
        if isinstance(rel_pos_size, int):
            rel_pos_size = (rel_pos_size, rel_pos_size)
        self.grid_tokens = bool(window_block_indexes) or use_rel_pos
        if self.grid_tokens and out_type == 'cls_token':
            raise ValueError("RILSViT: windowed/relative-position blocks drop the class token "
                             "(as ViTDet); out_type='cls_token' is not available")
        drop_path_rates = torch.linspace(0, drop_path_rate, self.num_layers, device='cpu').tolist()
        self.layers = ModuleList([
            QVBiasTransformerLayer(
                embed_dims=self.embed_dims,
                num_heads=self.arch_settings['num_heads'],
                feedforward_channels=self.arch_settings['feedforward_channels'],
                drop_rate=drop_rate,
                drop_path_rate=drop_path_rates[i],
                norm_cfg=norm_cfg,
                qv_bias=qv_bias,
                with_cp=with_cp,
                window_size=window_size if i in window_block_indexes else 0,
                use_rel_pos=use_rel_pos,
                rel_pos_size=rel_pos_size or tuple(self.patch_resolution),
                **layer_cfgs[i]) for i in range(self.num_layers)
        ])
        if self.grid_tokens:
            # ViTDet drops the class token: an unused trainable parameter would stall DDP.
            self.cls_token.requires_grad = False
        # Freeze after the blocks are rebuilt (MAEViT does not pass frozen_stages on).
        self.frozen_stages = frozen_stages
        if frozen_stages > 0:
            self._freeze_stages()

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer-wise depth of a parameter for layer-wise lr decay.

        As ``VisionTransformer.get_layer_depth`` (stem 0, block i at i + 1, everything else,
        e.g. the final norm or a head, at ``num_layers + 1``), with ``pre_norm`` in the stem.

        Args:
            param_name (str): Parameter name, e.g. ``'backbone.layers.3.attn.qkv.weight'``.
            prefix (str): The backbone's prefix in ``param_name``, e.g. ``'backbone.'``.

        Returns:
            tuple[int, int]: The parameter's depth and the number of depths.
        """
        if param_name.startswith(prefix + 'pre_norm.'):
            return 0, self.num_layers + 2
        return super().get_layer_depth(param_name, prefix)

    def init_weights(self) -> None:
        """MAE's initialisation (sin-cos positions, Xavier patch embedding), except after
        loading a checkpoint, whose patch embedding and class token must be kept."""
        if loads_pretrained(self.init_cfg):
            BaseModule.init_weights(self)  # the loaded positions and class token stay
        else:
            super().init_weights()

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by sorting random noise (as in MAE).

        Args:
            x (torch.Tensor): Patch tokens, B x L x C.
            mask_ratio (float): Fraction of patches to remove.
            noise (torch.Tensor, optional): B x L scores; the lowest are kept. Random if None.

        Returns:
            tuple: ``x_kept`` (B x L_keep x C, L_keep = round(L * (1 - mask_ratio))),
            ``mask`` (B x L, 1 = removed, in the original patch order) and ``ids_restore``
            (B x L, the inverse of the shuffle).
        """
        if noise is None:
            noise = torch.rand(x.shape[:2], device=x.device)
        return self._keep_first(x, torch.argsort(noise, dim=1), mask_ratio)

    def _keep_first(self, x: torch.Tensor, ids_shuffle: torch.Tensor, mask_ratio: float
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the first ``round(L * (1 - mask_ratio))`` patches of a per-sample order.

        Args:
            x (torch.Tensor): Patch tokens, B x L x C.
            ids_shuffle (torch.Tensor): B x L, a permutation of the patches per sample.
            mask_ratio (float): Fraction of patches to remove.

        Returns:
            tuple: ``x_kept`` (B x L_keep x C), ``mask`` (B x L, 1 = removed) and
            ``ids_restore`` (B x L).
        """
        B, L, C = x.shape
        num_keep = round(L * (1 - mask_ratio))
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :num_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def lock_groups(self) -> List[List[str]]:
        """Parameter names from input to output: the stem, one group per block, the last
        block with the final norm. open_clip's ``lock_image_tower`` has one group more, the
        image projection, which here is the image head's: ``ImageTextPretrainer`` appends it
        for ``lock_cfg.backbone=dict(unlocked_groups=N)``, so N means open_clip's N there.
        ``lock_module`` on this backbone alone counts these groups only."""
        return block_groups(self, 'layers.', self.num_layers,
                            stem=('patch_embed', 'cls_token', 'pos_embed', 'pre_norm'))

    def forward(self, x: torch.Tensor) -> tuple:
        """The intact pass (the transfer form), at any input size.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.

        Returns:
            tuple: One output per ``out_indices``, formatted by ``out_type`` (for 'raw':
            B x (1 + L) x C, class token first; with windowed or relative-position blocks the
            ViTDet form of :meth:`_forward_grid`, patch tokens only).
        """
        if self.grid_tokens:
            return self._forward_grid(x)
        return super(MAEViT, self).forward(x)

    def _check_masking(self) -> None:
        """Refuse the masked passes on a ViTDet-form encoder (it has no class token)."""
        if self.grid_tokens:
            raise ValueError('RILSViT: the masked pass is not available with windowed or '
                             'relative-position blocks')

    def uniform_masked_pass(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                            mask_ratio: Optional[float] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE's uniform masked pass on images at the pretraining size.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            noise (torch.Tensor, optional): B x L masking scores (the lowest are kept). Two
                passes given the same noise keep nested patch sets: the one with the higher
                ratio sees a subset of the other's patches.
            mask_ratio (float, optional): This call's ratio, in [0, 1); defaults to
                ``self.mask_ratio``. With 0 the pass equals the intact pass, but returns the
                masked pass's ``(latent, mask, ids_restore)``.

        Returns:
            tuple: ``latent`` B x (1 + L_keep) x C after the final norm, ``mask`` B x L
            (1 = removed) and ``ids_restore`` B x L.
        """
        self._check_masking()
        return self.masked_pass(self.embed_patches(x), mask_ratio, noise)

    def importance_masked_pass(self, x: torch.Tensor, importance: torch.Tensor
                               ) -> Tuple[torch.Tensor, ...]:
        """MILAN's masked pass (Hou et al., 2022): patches kept by sampling without
        replacement with the given weights, ``self.mask_ratio`` of them removed.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W, at the pretraining size.
            importance (torch.Tensor): B x L non-negative floats, high = keep.

        Returns:
            tuple: ``(latent, ids_restore, ids_keep, ids_dump)`` as mmpretrain's
            ``MILANViT``: latent B x (1 + L_keep) x C, ids_restore B x L, ids_keep
            B x L_keep, ids_dump B x (L - L_keep).
        """
        self._check_masking()
        patches = self.embed_patches(x)
        if (not isinstance(importance, torch.Tensor) or not importance.is_floating_point()
                or importance.shape != patches.shape[:2]):
            got = (f'{importance.dtype} {tuple(importance.shape)}'
                   if isinstance(importance, torch.Tensor) else repr(importance))
            raise ValueError(f'RILSViT: MILAN\'s importance must be B x L = '
                             f'{tuple(patches.shape[:2])} non-negative floats (high = keep), '
                             f'got {got}; a binary mask is not accepted')
        ids_shuffle = torch.multinomial(importance.float().to(x.device), patches.shape[1],
                                        replacement=False)
        kept, _, ids_restore = self._keep_first(patches, ids_shuffle, self.mask_ratio)
        num_keep = kept.shape[1]
        return (self.encode_tokens(kept), ids_restore, ids_shuffle[:, :num_keep],
                ids_shuffle[:, num_keep:])

    def shared_embedding_passes(self, x: torch.Tensor,
                                passes: Sequence[Optional[float]],
                                noise: Optional[torch.Tensor] = None) -> tuple:
        """Several passes over one patch embedding at the pretraining size (RILS's intact
        and masked pass).

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            passes (sequence of float | None): None is the intact pass (B x (1 + L) x C, as
                :meth:`intact_pass`), a ratio a uniform masked pass with that ratio (as
                :meth:`masked_pass`; all from the same ``noise`` when given, so nested).
            noise (torch.Tensor, optional): B x L masking scores.

        Returns:
            tuple: One result per entry of ``passes``.
        """
        if self.grid_tokens:
            raise ValueError('RILSViT: passes are not available with windowed or '
                             'relative-position blocks')
        patches = self.embed_patches(x)
        return tuple(self.intact_pass(patches) if ratio is None else
                     self.masked_pass(patches, ratio, noise) for ratio in passes)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus positions at the pretraining size: the input of both passes.

        RILS encodes every image twice; embedding the patches once and handing the result to
        :meth:`intact_pass` and :meth:`masked_pass` gives the same tokens as two full calls.

        Args:
            images (torch.Tensor): B x 3 x H x W at ``img_size``.

        Returns:
            torch.Tensor: B x L x C patch tokens in patch order, without the class token.
        """
        return self.patch_embed(images)[0] + self.pos_embed[:, 1:, :]

    def encode_tokens(self, patches: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        """The class token, the blocks and the final norm on a set of patch tokens.

        Args:
            patches (torch.Tensor): B x N x C embedded patch tokens (any subset, any order).
            dropout (bool): Apply the dropout after the positions (``drop_rate``), as the
                intact pass of mmpretrain's ViT does; MAE's masked pass does not.

        Returns:
            torch.Tensor: B x (1 + N) x C, class token first.
        """
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(patches.shape[0], -1, -1), patches), dim=1)
        if dropout:
            x = self.drop_after_pos(x)
        x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        if self.final_norm:
            x = self.ln1(x)
        return x

    def intact_pass(self, patches: torch.Tensor) -> torch.Tensor:
        """The intact pass from :meth:`embed_patches`' tokens: the same B x (1 + L) x C tokens
        as ``forward(images)`` with ``out_type='raw'`` at the pretraining size."""
        return self.encode_tokens(patches, dropout=True)

    def masked_pass(self, patches: torch.Tensor, mask_ratio: Optional[float] = None,
                    noise: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE's uniform masked pass from :meth:`embed_patches`' tokens.

        Args:
            patches (torch.Tensor): B x L x C.
            mask_ratio (float, optional): In [0, 1); defaults to ``self.mask_ratio``.
            noise (torch.Tensor, optional): B x L masking scores; the lowest are kept.

        Returns:
            tuple: ``latent`` B x (1 + L_keep) x C after the final norm, ``mask`` B x L
            (1 = removed) and ``ids_restore`` B x L.
        """
        if mask_ratio is None:
            mask_ratio = self.mask_ratio
        elif not 0 <= mask_ratio < 1:
            raise ValueError(f'RILSViT: mask_ratio must be in [0, 1), got {mask_ratio}')
        kept, mask, ids_restore = self.random_masking(patches, mask_ratio, noise)
        return self.encode_tokens(kept), mask, ids_restore

    def _forward_grid(self, x: torch.Tensor) -> tuple:
        """Intact pass of the ViTDet form: patch tokens only, as an H x W grid.

        The class token's position is used for nothing and the class token is dropped, as in
        ViTDet; positions are interpolated to the input's grid.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.

        Returns:
            tuple: One output per ``out_indices``: B x C x H/p x W/p for 'featmap', B x L x C
            for 'raw', B x C for 'avg_featmap'.
        """
        x, hw = self.patch_embed(x)
        pos_embed = resize_pos_embed(self.pos_embed, self.patch_resolution, hw,
                                     mode=self.interpolate_mode,
                                     num_extra_tokens=self.num_extra_tokens)
        x = self.pre_norm(self.drop_after_pos(x + pos_embed[:, self.num_extra_tokens:]))
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, hw)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                if self.out_type == 'featmap':
                    outs.append(x.transpose(1, 2).reshape(x.shape[0], -1, *hw))
                elif self.out_type == 'avg_featmap':
                    outs.append(self.ln2(x.mean(dim=1)))
                else:
                    outs.append(x)
        return tuple(outs)


@MODELS.register_module()
class RILSMaskedViT(RILSViT):
    """:class:`RILSViT` with mmpretrain's ``MAEViT`` contract: ``forward(x)`` is MAE's uniform
    masked pass.

    The encoder of MAE and MAE+CLIP, and a drop-in backbone for mmpretrain's own ``MAE`` and
    ``EVA``. Its checkpoint keys are :class:`RILSViT`'s, so the transfer configs (mmdet, mmseg,
    classifiers) load its weights into :class:`RILSViT`.
    """

    def forward(self, x: torch.Tensor, mask: Optional[bool] = True,
                noise: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None):
        """The masked pass, or with ``mask`` False or None the intact pass (as ``MAEViT``:
        mmpretrain's ``MAE.extract_feat`` asks for it with ``mask=None``).

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            mask (bool, optional): True: :meth:`uniform_masked_pass`; False or None:
                :meth:`RILSViT.forward`.
            noise (torch.Tensor, optional): B x L masking scores (the lowest are kept).
            mask_ratio (float, optional): The masked pass's ratio, in [0, 1); defaults to
                ``self.mask_ratio``.

        Returns:
            tuple: ``(latent, mask, ids_restore)`` (B x (1 + L_keep) x C, B x L, B x L), or
            the intact pass's outputs.
        """
        if mask is None or mask is False:
            return super().forward(x)
        if mask is not True:
            raise TypeError(f'RILSMaskedViT: mask must be True, False or None, got '
                            f'{type(mask).__name__}; MILAN\'s importance goes to RILSMILANViT')
        return self.uniform_masked_pass(x, noise, mask_ratio)


@MODELS.register_module()
class RILSMILANViT(RILSViT):
    """:class:`RILSViT` with mmpretrain's ``MILANViT`` contract: patches kept by importance.

    The encoder of mmpretrain's ``MILAN`` and :class:`~rils_mm.models.PixelTargetMILAN`
    (Hou et al., 2022, arXiv:2208.06049); same checkpoint keys as :class:`RILSViT`.
    """

    def forward(self, x: torch.Tensor, importance: Optional[torch.Tensor] = None):
        """MILAN's masked pass, or with ``importance=None`` the intact pass (as ``MILANViT``:
        mmpretrain's ``MILAN.extract_feat`` asks for it so).

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            importance (torch.Tensor, optional): B x L non-negative weights (high = keep).

        Returns:
            tuple: :meth:`importance_masked_pass`'s ``(latent, ids_restore, ids_keep,
            ids_dump)``, or the intact pass's outputs.
        """
        if importance is None:
            return super().forward(x)
        return self.importance_masked_pass(x, importance)


@MODELS.register_module()
class RILSMultiPassViT(RILSViT):
    """:class:`RILSViT` whose ``forward`` runs several passes over one patch embedding.

    RILS's encoder (Yang et al., 2023, arXiv:2301.06958): each step encodes the images intact
    and masked; the passes share the patch embedding, and go through ``forward`` so that
    wrappers (FSDP) see the call. Same checkpoint keys as :class:`RILSViT`.
    """

    def forward(self, x: torch.Tensor, passes: Optional[Sequence[Optional[float]]] = None,
                noise: Optional[torch.Tensor] = None):
        """The passes at the pretraining size, or with ``passes=None`` the intact pass at any
        size (mmpretrain's convention that None asks for the unmasked encoder).

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            passes (sequence of float | None, optional): See :meth:`shared_embedding_passes`.
            noise (torch.Tensor, optional): B x L masking scores shared by the masked passes.

        Returns:
            tuple: One result per pass, or the intact pass's outputs.
        """
        if passes is None:
            return super().forward(x)
        return self.shared_embedding_passes(x, passes, noise)


@MODELS.register_module()
class RILSPretrainViT(RILSMaskedViT):
    """The name configs and checkpoints written before the forms were split use.

    Builds the same modules (so the same checkpoint keys) as every class above and accepts
    every call those configs' algorithms make: ``forward(x)`` is the masked pass (as
    :class:`RILSMaskedViT`), a tensor as the second argument (or ``importance=``) is MILAN's
    masking (:class:`RILSMILANViT`), ``passes=`` RILS's passes (:class:`RILSMultiPassViT`).
    New configs name the class with the one form their algorithm uses.
    """

    def forward(self, x: torch.Tensor, mask: Union[bool, None, torch.Tensor] = True,
                noise: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                **kwargs):
        """Routes each form of the old signature to the method that now owns it.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            mask (bool | None | torch.Tensor): As :class:`RILSMaskedViT`, or MILAN's B x L
                importance.
            noise (torch.Tensor, optional): B x L masking scores.
            mask_ratio (float, optional): The uniform masked pass's ratio.
            **kwargs: ``importance`` (MILAN's, by keyword) or ``passes`` (RILS's).

        Returns:
            tuple: As the class that owns the form.
        """
        if 'importance' in kwargs:
            mask = kwargs.pop('importance')
        passes = kwargs.pop('passes', None)
        if kwargs:
            raise TypeError(f'RILSPretrainViT.forward: unexpected arguments {sorted(kwargs)}')
        if passes is not None:
            return self.shared_embedding_passes(x, passes, noise)
        if isinstance(mask, torch.Tensor):
            return self.importance_masked_pass(x, mask)
        return super().forward(x, mask, noise, mask_ratio)


# The classes whose forward takes a masking argument, None for the intact pass.
PRETRAINING_VITS = (RILSMaskedViT, RILSMILANViT, RILSMultiPassViT)


def intact_outputs(backbone: RILSViT, images: torch.Tensor) -> tuple:
    """The intact pass of any of these encoders, through ``forward`` (so that wrappers such
    as FSDP see the call).

    :class:`RILSViT` takes the images alone; the pretraining forms take None as their masking
    argument, as mmpretrain's ``MAEViT`` (``mask=None``) and ``MILANViT``
    (``importance=None``) do.

    Args:
        backbone (RILSViT): Any class of this module.
        images (torch.Tensor): B x 3 x H x W.

    Returns:
        tuple: One output per ``out_indices`` (for 'raw': B x (1 + L) x C).
    """
    if isinstance(backbone, PRETRAINING_VITS):
        return backbone(images, None)
    return backbone(images)
