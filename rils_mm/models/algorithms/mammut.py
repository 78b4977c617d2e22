"""MaMMUT: contrastive and captioning learning with one text decoder (Kuo et al., "MaMMUT: A
Simple Architecture for Joint Learning for MultiModal Tasks", TMLR 2023, arXiv:2303.16839)."""
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from ..utils.grad_cache import Embedded
from ..utils.precision import at_least_float32
from .image_text_pretrainer import ImageTextPretrainer


@MODELS.register_module()
class MaMMUT(ImageTextPretrainer):
    """The image tower, an image head for the contrastive embedding, and one text decoder
    (``MaMMUTTextDecoder``) run twice per step.

    - Contrastive: the decoder's bidirectional pass embeds the caption; the image head pools
      the image tokens (MaMMUT: mean, LayerNorm, projection); the loss is ``loss_contrastive``
      (``FocalContrastiveLoss`` as in the paper's code, or the softmax ``ContrastiveLoss``).
    - Captioning: the image tokens, through a LayerNorm and a projection to the decoder width,
      are the keys and values of the decoder's cross-attention; the causal pass predicts
      tokens 1.. from tokens ..-1, cross-entropy with padding ignored.

    Total loss = ``caption_loss_weight`` x captioning + the contrastive loss (its own
    ``loss_weight``). Equal weights by default, as the paper reports; open_clip's CoCa weighs
    captioning 2 : 1.

    ``mode='predict'`` generates captions (:meth:`generate`), greedy or by beam search, and
    returns them decoded with open_clip's tokenizer in each ``DataSample``'s ``pred_caption``.

    Args:
        text_encoder (dict): The ``MaMMUTTextDecoder`` config.
        caption_loss_weight (float): Weight of the captioning loss. Defaults to 1.
        max_caption_length (int): Generated tokens at most (end token included). Defaults to
            20.
        beam_size (int): 1 for greedy decoding. Defaults to 1.
        sot_id (int): Start-of-text id. Defaults to CLIP BPE's 49406.
        eot_id (int): End-of-text id. Defaults to CLIP BPE's 49407.
        **kwargs: ``ImageTextPretrainer`` arguments.
    """

    def __init__(self, text_encoder: dict, caption_loss_weight: float = 1.0,
                 max_caption_length: int = 20, beam_size: int = 1, sot_id: int = 49406,
                 eot_id: int = 49407, **kwargs) -> None:
        super().__init__(text_encoder=text_encoder, **kwargs)
        if not hasattr(self.text_encoder, 'caption_logits'):
            raise ValueError('MaMMUT: text_encoder must be a decoder with a captioning pass '
                             f'(MaMMUTTextDecoder), got {type(self.text_encoder).__name__}')
        self.caption_loss_weight = caption_loss_weight
        self.max_caption_length = max_caption_length
        self.beam_size = beam_size
        self.sot_id, self.eot_id = sot_id, eot_id
        self.pad_id = self.text_encoder.pad_id
        self.image_to_decoder = nn.Sequential(
            nn.LayerNorm(self.backbone.embed_dims),
            nn.Linear(self.backbone.embed_dims, self.text_encoder.width))

    def decoder_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x (1 + L) x C encoder tokens -> B x (1 + L) x decoder width."""
        return self.image_to_decoder(tokens)

    def caption_loss(self, tokens: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the non-padding targets.

        Args:
            tokens (torch.Tensor): B x (1 + L) x C encoder tokens.
            texts (torch.Tensor): B x T caption ids (start, words, end, padding).

        Returns:
            torch.Tensor: The mean over the target tokens that are not padding.
        """
        return self._caption_loss_and_count(tokens, texts)[0]

    def _caption_loss_and_count(self, tokens: torch.Tensor,
                                texts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`caption_loss` and the number of target tokens it averages over."""
        # Positions after every row's end only predict padding: drop them, and project to the
        # vocabulary only where the target is a real token.
        length = max(int((texts != self.pad_id).sum(1).max()), 2)
        inputs, targets = texts[:, :length - 1], texts[:, 1:length]
        features = self.text_encoder.caption_features(inputs, self.decoder_image_tokens(tokens))
        scored = targets != self.pad_id
        logits = self.text_encoder.lm_head(features[scored])
        return F.cross_entropy(at_least_float32(logits), targets[scored]), scored.sum()

    def embed(self, inputs: dict) -> Embedded:
        """The image tower, the decoder's contrastive pass, and its captioning pass.

        Args:
            inputs (dict): ``images`` B x 3 x H x W (normalised), ``texts`` B x 77 ids.

        Returns:
            Embedded: the contrastive embeddings (B x D) and the local ``loss_caption``
            (times ``caption_loss_weight``): the mean over the batch's target tokens, with
            their count.
        """
        tokens = self.image_tokens(inputs['images'])
        representations = dict(image_embeddings=self.embed_image_tokens(tokens),
                               text_embeddings=self.encode_text(inputs['texts']))
        caption, count = self._caption_loss_and_count(tokens, inputs['texts'])
        return Embedded(representations,
                        dict(loss_caption=(self.caption_loss_weight * caption, count)))

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_length: Optional[int] = None,
                 beam_size: Optional[int] = None) -> List[List[int]]:
        """Caption token ids, start and end tokens excluded.

        Args:
            images (torch.Tensor): B x 3 x H x W, normalised.
            max_length (int, optional): Generated tokens at most (the end token included).
                Defaults to ``max_caption_length``.
            beam_size (int, optional): Beams; 1 is greedy. Defaults to ``beam_size``.

        Returns:
            list[list[int]]: B token id lists.
        """
        max_length = max_length or self.max_caption_length
        beam_size = beam_size or self.beam_size
        max_length = min(max_length, self.text_encoder.context_length - 1)
        memory = self.decoder_image_tokens(self.image_tokens(images))
        if beam_size == 1:
            return self._greedy(memory, max_length)
        return [self._beam(memory[i:i + 1], max_length, beam_size) for i in range(len(memory))]

    def _next_log_probs(self, sequences: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        logits = self.text_encoder.caption_logits(sequences, memory)[:, -1].float()
        return logits.log_softmax(dim=-1)

    def _greedy(self, memory: torch.Tensor, max_length: int) -> List[List[int]]:
        sequences = torch.full((len(memory), 1), self.sot_id, device=memory.device)
        finished = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
        for _ in range(max_length):
            next_ids = self._next_log_probs(sequences, memory).argmax(dim=-1)
            next_ids = next_ids.masked_fill(finished, self.pad_id)
            sequences = torch.cat([sequences, next_ids[:, None]], dim=1)
            finished |= next_ids == self.eot_id
            if finished.all():
                break
        return [self._strip(row.tolist()[1:]) for row in sequences]

    def _beam(self, memory: torch.Tensor, max_length: int, beam_size: int) -> List[int]:
        """Beam search for one image: the finished hypothesis (or, when none finished, the
        live one) with the highest total log-probability."""
        beams = [([self.sot_id], 0.0)]
        finished = []
        for _ in range(max_length):
            sequences = torch.tensor([tokens for tokens, _ in beams], device=memory.device)
            log_probs = self._next_log_probs(sequences, memory.expand(len(beams), -1, -1))
            candidates = []
            for (tokens, score), row in zip(beams, log_probs):
                values, indices = row.topk(beam_size)
                candidates += [(tokens + [int(i)], score + float(v))
                               for v, i in zip(values, indices)]
            candidates.sort(key=lambda item: item[1], reverse=True)
            beams = []
            for tokens, score in candidates:
                if tokens[-1] == self.eot_id:
                    finished.append((tokens, score))
                else:
                    beams.append((tokens, score))
                if len(beams) == beam_size:
                    break
            best_finished = max((s for _, s in finished), default=float('-inf'))
            if not beams or best_finished >= beams[0][1]:
                break  # scores only fall, so no live beam can overtake the best finished one
        best = max(finished or beams, key=lambda item: item[1])[0]
        return self._strip(best[1:])

    def _strip(self, tokens: List[int]) -> List[int]:
        """Tokens up to (not including) the end token."""
        return tokens[:tokens.index(self.eot_id)] if self.eot_id in tokens else tokens

    def forward(self, inputs, data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor', **kwargs: Any):
        """mmpretrain's ``tensor`` and ``loss`` modes, ``predict`` (captions), and the
        accumulated step's ``surrogate``."""
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        return super().forward(inputs, data_samples, mode, **kwargs)

    def predict(self, inputs, data_samples: Optional[List[DataSample]] = None,
                **kwargs) -> List[DataSample]:
        """Generated captions in ``pred_caption`` (and their ids in ``pred_caption_ids``), or
        with a ``zero_shot`` config the zero-shot class scores (validation while training)."""
        if self.zero_shot_cfg is not None:
            return super().predict(inputs, data_samples)
        from ...datasets.transforms.tokenize import get_clip_tokenizer
        images = inputs['images'] if isinstance(inputs, dict) else inputs
        ids = self.generate(images)
        tokenizer = get_clip_tokenizer()
        data_samples = data_samples or [DataSample() for _ in ids]
        for sample, caption_ids in zip(data_samples, ids):
            sample.set_field(caption_ids, 'pred_caption_ids', field_type='metainfo')
            sample.set_field(tokenizer.decode(caption_ids).strip(), 'pred_caption',
                             field_type='metainfo')
        return data_samples
