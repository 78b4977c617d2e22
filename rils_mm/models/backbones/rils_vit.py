"""The RILS vision encoder: a plain ViT with an intact and a masked pass.

Two classes with one checkpoint layout: ``RILSPretrainViT`` keeps mmpretrain's ``MAEViT``
contract (``forward(x)`` is the masked pass, ``mask=False`` the intact one) for pretraining, and
``RILSViT`` serves transfer (mmpretrain classifiers, mmdet and mmseg take the intact pass with
``out_indices``/``out_type`` as in mmpretrain's ``VisionTransformer``; position embeddings are
interpolated to any input size). For detection, optional ViTDet-style blocks: windowed attention
in all but a few global blocks and decomposed relative position bias.
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
    pass keeps exactly ``round(L * (1 - mask_ratio))`` patches; ``forward`` defaults to the
    intact pass (so the class can be dropped into classifiers and detectors; the pretraining
    form that masks by default is :class:`RILSPretrainViT`); optional gradient checkpointing
    per block.

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
        """Parameter names from input to output (stem, blocks, last block with the final
        norm), as open_clip's ``lock_image_tower`` groups a ViT."""
        return block_groups(self, 'layers.', self.num_layers,
                            stem=('patch_embed', 'cls_token', 'pos_embed', 'pre_norm'))

    def forward(self, x: torch.Tensor, mask: Union[bool, None, torch.Tensor] = False,
                noise: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                **kwargs):
        """Intact or masked pass (the transfer form: intact by default).

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            mask (bool | None | torch.Tensor): False or None: the intact pass on all patches,
                returning a tuple of the ``out_indices`` outputs formatted by ``out_type``
                (for 'raw': B x (1 + L) x C, class token first). True: the masked pass at the
                pretraining size, MAE's uniform masking. A B x L tensor: MILAN's masking
                (mmpretrain's ``MILANViT`` contract, also as ``importance=``): patches are kept
                by sampling without replacement with these (non-negative) weights.
            noise (torch.Tensor, optional): B x L masking scores for the uniform masked pass
                (the lowest are kept). Two passes given the same noise keep nested patch
                sets: the one with the higher ratio sees a subset of the other's patches.
            mask_ratio (float, optional): The uniform masked pass's ratio for this call, in
                [0, 1); defaults to ``self.mask_ratio``. With 0 the pass equals the intact
                pass, but returns the masked pass's ``(latent, mask, ids_restore)``.
            passes (sequence of float | None, keyword): Several passes over one patch
                embedding at the pretraining size (RILS's intact and masked pass): None is the
                intact pass, a ratio a uniform masked pass with that ratio (all from the same
                ``noise`` when given, so nested). Returns one result per entry, as below.

        Returns:
            tuple: Intact pass: the outputs. Uniform masking ``(latent, mask, ids_restore)``:
            latent is B x (1 + L_keep) x C after the final norm, mask and ids_restore are
            B x L. MILAN's masking ``(latent, ids_restore, ids_keep, ids_dump)``, as
            ``MILANViT``.
        """
        if 'importance' in kwargs:
            mask = kwargs.pop('importance')
        passes = kwargs.pop('passes', None)
        if kwargs:
            raise TypeError(f'RILSViT.forward: unexpected arguments {sorted(kwargs)}')
        if passes is not None:
            if self.grid_tokens:
                raise ValueError('RILSViT: passes are not available with windowed or '
                                 'relative-position blocks')
            # Through forward (not the helpers) so that wrappers such as FSDP see the call.
            patches = self.embed_patches(x)
            return tuple(self.intact_pass(patches) if ratio is None else
                         self.masked_pass(patches, ratio, noise) for ratio in passes)
        if mask is None or mask is False:
            if self.grid_tokens:
                return self._forward_grid(x)
            return super(MAEViT, self).forward(x)
        if self.grid_tokens:
            raise ValueError('RILSViT: the masked pass is not available with windowed or '
                             'relative-position blocks')
        patches = self.embed_patches(x)
        if isinstance(mask, torch.Tensor):
            if not mask.is_floating_point() or mask.shape != patches.shape[:2]:
                raise ValueError(f'RILSViT: a tensor as the second argument is MILAN\'s '
                                 f'importance (B x L = {tuple(patches.shape[:2])} non-negative '
                                 f'floats, high = keep), got {mask.dtype} '
                                 f'{tuple(mask.shape)}; a binary mask is not accepted')
            # MILAN (Hou et al., 2022): keep patches with probability following the weights.
            ids_shuffle = torch.multinomial(mask.float().to(x.device), patches.shape[1],
                                            replacement=False)
            kept, _, ids_restore = self._keep_first(patches, ids_shuffle, self.mask_ratio)
            num_keep = kept.shape[1]
            return (self.encode_tokens(kept), ids_restore, ids_shuffle[:, :num_keep],
                    ids_shuffle[:, num_keep:])
        return self.masked_pass(patches, mask_ratio, noise)

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
class RILSPretrainViT(RILSViT):
    """:class:`RILSViT` with mmpretrain's ``MAEViT`` contract: ``forward(x)`` is the masked pass.

    The pretraining encoder of every method of this package, and a drop-in backbone for
    mmpretrain's own ``MAE``, ``EVA`` and ``MILAN`` algorithms. Its checkpoint keys are
    :class:`RILSViT`'s, so the transfer configs (mmdet, mmseg, classifiers) load its weights
    into :class:`RILSViT`, whose ``forward(x)`` is the intact pass.
    """

    def forward(self, x: torch.Tensor, mask: Union[bool, None, torch.Tensor] = True,
                noise: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                **kwargs):
        """As :meth:`RILSViT.forward`, masked by default (``mask=False`` or None: intact)."""
        return super().forward(x, mask, noise, mask_ratio, **kwargs)
