"""`RecapModel`: Hugging Face BART with BART-fusion and the RECAP alignment loss (SPEC §1).

Composition, not a copy of BART's modeling code:

    lyrics ids ─► bart.encoder.embed_* ─► layer 0 … layer 3 ─► hidden_states[4] ─► pool ─► align_proj
                                          layer 4 ─► fusion(music) ─► layer 5 ─► fusion(music)
                                                                                   │
                          BaseModelOutput(last_hidden_state) ─► bart (decoder, lm_head, generate)

The encoder loop below calls BART's own embedding and layer modules; the fused states are handed
to `BartForConditionalGeneration` as `encoder_outputs`, so the decoder, the LM head and
`generate()` (beam search, sampling, …) are Hugging Face's unchanged. Music enters only the
encoder, so generation never has to expand it per beam.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BartForConditionalGeneration, GenerationConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.bart.modeling_bart import BartEncoderLayer, shift_tokens_right
from transformers.utils import ModelOutput

from recap.models.config import RecapConfig
from recap.models.encoders import (
    MusicEncoderProtocol,
    build_music_encoder,
    music_encoder_from_config,
)
from recap.models.fusion import FusionBlock
from recap.models.losses import AttentionPool, SongIds, masked_mean, recap_loss
from recap.models.pointer import CopyHead
from recap.models.pretrained import PretrainedMixin
from recap.utils import RecapError

# Early transformers 5 releases still required a `layer_head_mask` argument on encoder layers;
# later ones dropped it. Pass it only where it exists (read once, never mutated).
_LAYER_KWARGS: dict[str, Any] = (
    {"layer_head_mask": None}
    if "layer_head_mask" in inspect.signature(BartEncoderLayer.forward).parameters
    else {}
)


@dataclass
class RecapEncoderOutput(ModelOutput):
    """What the fused encoder produces.

    last_hidden_state: (B, L, d) fused states the decoder attends to.
    hidden_states: L+1 tensors (B, L, d): the embeddings, then each layer's output (after fusion
        where fusion applies); `hidden_states[align_layer]` is the one pooled for alignment.
    lyrics_vector: (B, music_dim) projected pooled lyrics (None without a projection).
    music_vector: (B, music_dim) mean of the music sequence over all its tokens (None without music).
    """

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    lyrics_vector: torch.Tensor | None = None
    music_vector: torch.Tensor | None = None


@dataclass
class RecapOutput(ModelOutput):
    """Forward result: `loss = caption_loss + align_weight * align_loss` (None without labels)."""

    loss: torch.Tensor | None = None
    caption_loss: torch.Tensor | None = None
    align_loss: torch.Tensor | None = None
    reconstruct_loss: torch.Tensor | None = None
    select_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lyrics_vector: torch.Tensor | None = None
    music_vector: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


class RecapModel(PretrainedMixin, nn.Module):
    """The RECAP captioner: BART + fusion + alignment projection (+ an optional frozen music
    encoder: CNNSA, or another behind `recap.models.encoders.MusicEncoderProtocol`).

    `config.use_music=False` is plain BART (the `bart` method): music inputs are ignored.
    Music comes either as precomputed embeddings `music_embeds` (B, M, music_dim) — the training
    path — or as a raw `waveform` (B, T) at the encoder's sample rate (16 kHz for CNNSA), run
    through the frozen music encoder in eval mode. Saving and loading (`save_pretrained`,
    `from_pretrained`, `from_bart`) come from `recap.models.pretrained.PretrainedMixin`.
    """

    def __init__(
        self,
        config: RecapConfig,
        bart: BartForConditionalGeneration | None = None,
        music_encoder: MusicEncoderProtocol | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)  # attach_music_encoder updates it: keep callers' intact
        config = self.config
        self.bart = bart if bart is not None else BartForConditionalGeneration(config.bart_config())
        self.bart.config._attn_implementation = config.attn_implementation
        if config.use_music and config.fusion_layers:
            n_blocks = 1 if config.fusion_shared else len(config.fusion_layers)
            self.fusion = nn.ModuleList(
                FusionBlock(
                    config.d_model,
                    config.music_dim,
                    num_heads=config.fusion_heads,
                    scale=config.fusion_scale,
                    gate=config.fusion_gate,
                    init_std=config.init_std if config.fusion_init == "normal" else None,
                )
                for _ in range(n_blocks)
            )
        else:
            self.fusion = None
        # The projection exists whenever music does, so a BART-fusion model (w = 0) can still be
        # fine-tuned with alignment later and its parameter count matches RECAP's.
        self.align_proj = nn.Linear(config.d_model, config.music_dim) if config.use_music else None
        self.music_memory = (
            nn.Linear(config.music_dim, config.d_model) if config.music_memory else None
        )
        # Options not in the paper (docs/training.md): a learned attention pool instead of the
        # mean, and a learned InfoNCE temperature. Absent by default, so a paper model's
        # parameters (and state_dict keys) are the paper's.
        self.align_pool = (
            AttentionPool(config.d_model)
            if config.use_music and config.align_pool == "attention"
            else None
        )
        self.align_log_temperature = (
            nn.Parameter(torch.tensor(float(config.align_temperature)).log())
            if config.use_music and config.align_learn_temperature
            else None
        )
        self.copy_head = (
            CopyHead(
                config.d_model,
                config.vocab_size,
                config.copy_word_positions,
                config.copy_follow_bigram,
                config.copy_state_bonus,
                config.copy_word_pieces,
                config.copy_word_counts,
                config.copy_coverage,
                select=config.copy_select_weight > 0,
            )
            if config.copy_head
            else None
        )
        if self.copy_head is not None:
            self.bart.lm_head.register_forward_hook(self.copy_head.hook)
            self.bart.get_decoder().register_forward_pre_hook(
                self.copy_head.read_decoder_ids, with_kwargs=True
            )
        self.music_encoder: MusicEncoderProtocol | None = None
        if music_encoder is not None:
            self.attach_music_encoder(music_encoder)
        elif config.with_music_encoder:
            self.attach_music_encoder(music_encoder_from_config(config.music_kind, config.music))
        self.bart.generation_config = self._generation_config()
        self.tokenizer: Any = None  # attached by from_pretrained / from_bart when files exist
        # The words of the training captions (`caption_words.json`; `recap train` sets them),
        # for decoding with `known_words` (recap.inference.words). None: not known.
        self.caption_words: frozenset[str] | None = None

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """The tokenizer saved with the model; the copy head learns which ids begin words."""
        self.tokenizer = tokenizer
        if self.copy_head is not None and tokenizer is not None:
            self.copy_head.set_word_starts(tokenizer)

    # ------------------------------------------------------------------ parts
    def attach_music_encoder(self, encoder: MusicEncoderProtocol) -> None:
        """Hold `encoder` (frozen, eval mode) for waveform input; it is saved with the model."""
        if encoder.hidden_size != self.config.music_dim:
            raise RecapError(
                f"music encoder width {encoder.hidden_size} does not match the model's "
                f"music_dim {self.config.music_dim}"
            )
        self.music_encoder = encoder
        self.config.music_kind = encoder.kind
        self.config.music = encoder.config
        self.config.with_music_encoder = True
        self.freeze_music_encoder()

    def use_music_encoder(self, spec: Any) -> None:
        """Give a model saved without a music encoder the one its embeddings came from (a spec
        such as "hf:DIR", or an encoder); a model that holds its own accepts only that one."""
        encoder = build_music_encoder(spec)
        if encoder.kind != self.config.music_kind:
            raise RecapError(
                f"this model was trained on a {self.config.music_kind} music encoder, "
                f"not {encoder.kind} ({spec})"
            )
        if self.music_encoder is None:
            self.attach_music_encoder(encoder)
        elif self.music_encoder.fingerprint() != encoder.fingerprint():
            raise RecapError(
                f"this model carries its own music encoder and {spec} is another one: captions "
                "need the encoder the model was trained with"
            )

    def freeze_music_encoder(self) -> None:
        """No gradient, eval mode (BatchNorm running stats, no dropout) — both codebases freeze it;
        one ran it in train mode by mistake (SPEC §1.1)."""
        if self.music_encoder is not None:
            self.music_encoder.requires_grad_(False)
            self.music_encoder.eval()

    def train(self, mode: bool = True) -> RecapModel:
        super().train(mode)
        self.freeze_music_encoder()  # stays in eval mode whatever the model's mode
        return self

    def _fusion_block(self, layer: int) -> FusionBlock | None:
        if self.fusion is None or layer not in self.config.fusion_layers:
            return None
        if self.config.fusion_shared:
            return self.fusion[0]
        return self.fusion[self.config.fusion_layers.index(layer)]

    def param_counts(self) -> dict[str, int]:
        """Parameter counts per part (shared tensors counted once) plus totals."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        counts = {
            "bart": count(self.bart),
            "fusion": count(self.fusion),
            "projection": count(self.align_proj) + count(self.align_pool),
            "music_encoder": count(self.music_encoder),
        }
        counts["total"] = count(self)
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    # ------------------------------------------------------------------ music
    def music_sequence(
        self, music_embeds: torch.Tensor | None = None, waveform: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The music token sequence (B, M, music_dim), or None for the lyrics-only method.

        `waveform` is (B, T), or (B, W, T) for songs heard in W windows: their tokens are
        concatenated along the token axis, (B, W*M, music_dim), and fusion attends over all."""
        if not self.config.use_music:
            return None
        if music_embeds is not None:
            if music_embeds.dim() != 3 or music_embeds.size(-1) != self.config.music_dim:
                raise RecapError(
                    f"music_embeds must be (B, M, {self.config.music_dim}), "
                    f"got {tuple(music_embeds.shape)}"
                )
            return music_embeds.to(self.align_proj.weight.dtype)
        if waveform is not None:
            if self.music_encoder is None:
                raise RecapError(
                    "waveform input needs a music encoder: load one with "
                    "RecapModel.from_bart(..., music_encoder=PATH) or attach_music_encoder()"
                )
            with torch.no_grad():
                if waveform.dim() == 3:  # (B, W, T): every song heard in W windows
                    b, w, t = waveform.shape
                    tokens = self.music_encoder(waveform.reshape(b * w, t))  # (B*W, M, m)
                    return tokens.reshape(b, w * tokens.size(1), tokens.size(2))  # (B, W*M, m)
                return self.music_encoder(waveform)  # (B, T) -> (B, M, music_dim)
        raise RecapError(f"method {self.config.method!r} uses music: pass music_embeds or waveform")

    def embed_music(
        self,
        music_embeds: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        normalize: bool = False,
        music_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Music vector (B, music_dim): the mean over all tokens of the music sequence (CLS
        included, SPEC §1.4; every window's tokens for a windowed song, `music_mask` (B, M)
        leaving out a batch's padding). This is the audio side of the aligned space used for retrieval;
        `normalize=True` returns unit vectors (inner product = cosine)."""
        music = self.music_sequence(music_embeds, waveform)
        if music is None:
            raise RecapError(f"method {self.config.method!r} has no music embedding space")
        vector = masked_mean(music, music_mask)  # (B, M, m) -> (B, m)
        return nn.functional.normalize(vector, dim=-1) if normalize else vector

    # ------------------------------------------------------------------ encoder
    def _pad_source(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention mask (ones when None), and with `pad_to_max_source_length` both padded
        on the right to `max_source_length` (the authors' padding); longer inputs are kept."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = self.config.max_source_length - input_ids.size(1)
        if self.config.pad_to_max_source_length and extra > 0:
            input_ids = nn.functional.pad(input_ids, (0, extra), value=self.config.pad_token_id)
            attention_mask = nn.functional.pad(attention_mask, (0, extra), value=0)
        return input_ids, attention_mask

    def _pool_lyrics(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = None if self.config.pool_includes_padding else attention_mask
        pooled = (
            masked_mean(hidden, mask) if self.align_pool is None else self.align_pool(hidden, mask)
        )
        return self.align_proj(pooled)  # (B, L, d) -> (B, d) -> (B, m)

    def align_temperature(self) -> float | torch.Tensor:
        """InfoNCE's temperature: the config's, or the learned one (kept at 0.01 or above, so
        the logits cannot blow up)."""
        if self.align_log_temperature is None:
            return self.config.align_temperature
        return self.align_log_temperature.exp().clamp_min(0.01)

    def _run_encoder(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        music: torch.Tensor | None,
        num_layers: int | None = None,
        music_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """BART's encoder, layer by layer, with fusion after the configured layers.

        Returns the hidden states [embeddings, out_0, …]; `num_layers` stops early.
        """
        encoder = self.bart.get_encoder()
        embeds = encoder.embed_tokens(input_ids)  # (B, L, d), scaled as BART does
        positions = encoder.embed_positions(input_ids)  # (B, L, d); uses the shape only
        hidden = encoder.layernorm_embedding(embeds + positions.to(embeds.device))
        hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=self.training)
        # Positional call: the keyword was renamed across transformers 5.x releases.
        mask = create_bidirectional_mask(encoder.config, embeds, attention_mask)
        states = [hidden]
        layers = encoder.layers if num_layers is None else encoder.layers[:num_layers]
        for index, layer in enumerate(layers):
            # LayerDrop as in BartEncoder (0 for bart-base): a dropped layer is the identity.
            if not (self.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop):
                out = layer(hidden, mask, **_LAYER_KWARGS)
                hidden = out[0] if isinstance(out, tuple) else out  # older 5.x returned tuples
            block = self._fusion_block(index)
            if block is not None and music is not None:
                hidden = block(hidden, music, music_mask)
            states.append(hidden)
        return states

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        music_embeds: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        music_mask: torch.Tensor | None = None,
    ) -> RecapEncoderOutput:
        """Run the fused encoder once: input_ids (B, L) (+ music) → `RecapEncoderOutput`
        (L becomes max_source_length with `pad_to_max_source_length`). `music_mask` (B, M):
        1 for real music tokens, 0 for padding (songs with fewer windows); None: all real."""
        input_ids, attention_mask = self._pad_source(input_ids, attention_mask)
        music = self.music_sequence(music_embeds, waveform)
        if music is None:
            music_mask = None
        states = self._run_encoder(input_ids, attention_mask, music, music_mask=music_mask)
        lyrics_vector = music_vector = None
        if self.align_proj is not None:
            lyrics_vector = self._pool_lyrics(states[self.config.align_layer], attention_mask)
        if music is not None:
            music_vector = masked_mean(music, music_mask)  # (B, M, m) -> (B, m), CLS included
        return RecapEncoderOutput(
            last_hidden_state=states[-1],
            hidden_states=tuple(states),
            lyrics_vector=lyrics_vector,
            music_vector=music_vector,
        )

    def embed_lyrics(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        music_embeds: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        normalize: bool = False,
        music_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Lyrics vector (B, music_dim): `align_proj(mean of encoder hidden_states[align_layer])`.

        This is the lyrics side of the aligned space (compare with `embed_music`). With the
        default fusion after layers 4, 5 the pooled state precedes any fusion, so no music is
        needed and only the first `align_layer` layers run. Call `model.eval()` first.
        """
        if self.align_proj is None:
            raise RecapError(f"method {self.config.method!r} has no lyrics projection")
        input_ids, attention_mask = self._pad_source(input_ids, attention_mask)
        music = None
        if any(layer < self.config.align_layer for layer in self.config.fusion_layers):
            music = self.music_sequence(music_embeds, waveform)
        states = self._run_encoder(
            input_ids, attention_mask, music, self.config.align_layer, music_mask
        )
        vector = self._pool_lyrics(states[self.config.align_layer], attention_mask)
        return nn.functional.normalize(vector, dim=-1) if normalize else vector

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        music_embeds: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        song_ids: SongIds = None,
        music_mask: torch.Tensor | None = None,
        lyrics_present: Sequence[bool] | None = None,
        source_index: torch.Tensor | None = None,
        music_present: Sequence[bool] | None = None,
    ) -> RecapOutput:
        """Teacher-forced forward pass with the named loss terms when `labels` (B, T) are given.

        `labels` may be padded with the pad id (masked unless `loss_includes_padding`) or -100;
        `decoder_input_ids` default to labels shifted right. `song_ids` (one per row) make the
        alignment loss count each song once; rows without lyrics (`lyrics_present` False, or
        only <s></s>) or without music (`music_present` False: text-only rows, whose
        `music_mask` row is all 0) are left out of it. `music_mask` (B, M): see `encode`.

        `source_index` (B,): captions share sources. The lyrics, music, `song_ids` and
        `lyrics_present` are then U source rows, each encoded once, and caption b is decoded
        from source `source_index[b]` (`Collator.share_sources`): the caption and alignment
        terms of repeating each source for its captions (the reconstruction term counts each
        source once), with U/B of the encoder's work.
        """
        input_ids, attention_mask = self._pad_source(input_ids, attention_mask)
        encoded = self.encode(input_ids, attention_mask, music_embeds, waveform, music_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise RecapError("forward needs labels or decoder_input_ids")
            decoder_input_ids = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        states, row_ids, row_mask = encoded.last_hidden_state, input_ids, attention_mask
        memory = self._memory(encoded)
        if source_index is not None:
            # (U, L, d) -> (B, L, d): each caption reads its own song's encoding
            index = source_index.to(states.device)
            states, row_ids, row_mask = (t[index] for t in (states, input_ids, attention_mask))
            memory = memory[index] if memory is not None else None
        read, read_mask = self._with_memory(states, row_mask, memory)
        with self._copying(states, row_ids, row_mask):
            out = self.bart(
                attention_mask=read_mask,
                decoder_input_ids=decoder_input_ids,
                encoder_outputs=BaseModelOutput(last_hidden_state=read),
                use_cache=False,
            )
            select_logits = self.copy_head.selection_logits() if self.copy_head else None
        reconstruct_logits = None
        if labels is not None and self.config.reconstruct_weight:
            # (B, L, d) -> (B, L, V) through the tied output embedding, as the decoder's tokens.
            hidden = encoded.last_hidden_state
            reconstruct_logits = self.bart.lm_head(hidden) + self.bart.final_logits_bias
        result = RecapOutput(
            logits=out.logits,
            lyrics_vector=encoded.lyrics_vector,
            music_vector=encoded.music_vector,
            encoder_last_hidden_state=encoded.last_hidden_state,
        )
        if labels is not None:
            music_vector, lyrics_vector, align_ids = self._alignable(
                encoded, attention_mask, song_ids, lyrics_present, music_present
            )
            terms = recap_loss(
                out.logits,
                labels,
                music=music_vector,
                lyrics=lyrics_vector,
                song_ids=align_ids,
                align_weight=self.config.align_weight,
                align_kind=self.config.align_loss,
                temperature=self.align_temperature(),
                pad_token_id=self.config.pad_token_id,
                include_padding=self.config.loss_includes_padding,
                reconstruct_logits=reconstruct_logits,
                input_ids=input_ids,
                attention_mask=attention_mask,
                reconstruct_weight=self.config.reconstruct_weight,
                select=self._selection(select_logits, row_ids, row_mask, labels),
                select_weight=self.config.copy_select_weight,
            )
            result.loss = terms.loss
            result.caption_loss = terms.caption_loss
            result.align_loss = terms.align_loss
            result.reconstruct_loss = terms.reconstruct_loss
            result.select_loss = terms.select_loss
        return result

    def _selection(
        self,
        logits: torch.Tensor | None,
        source_ids: torch.Tensor,
        source_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The content selector's (logits, targets, mask), each (B, S), for `recap_loss`; None
        without a selector. Targets: the source words that the caption (`labels`) contains."""
        if logits is None or self.copy_head is None:
            return None
        pad = self.config.pad_token_id
        caption = labels.masked_fill(labels < 0, pad)  # -100 -> pad: an id the table knows
        targets, in_word = self.copy_head.selection_targets(
            source_ids, source_mask, caption, caption != pad
        )
        return logits, targets, in_word

    @staticmethod
    def _alignable(
        encoded: RecapEncoderOutput,
        attention_mask: torch.Tensor,
        song_ids: SongIds,
        lyrics_present: Sequence[bool] | None,
        music_present: Sequence[bool] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, SongIds]:
        """The rows the alignment loss may pair: rows with lyrics and music. A row whose lyrics
        are empty (only <s></s>: lyrics dropped in training, an instrumental) has no lyrics
        vector to pull towards its music, a text-only row no music; with none left the term is
        zero. `lyrics_present` and `music_present` (one bool per row, from the collator, so the
        training step never waits on the device); `lyrics_present` None reads it from
        `attention_mask`, `music_present` None means every row has music."""
        music, lyrics = encoded.music_vector, encoded.lyrics_vector
        if music is None or lyrics is None:
            return music, lyrics, song_ids
        if lyrics_present is None:
            lyrics_present = (attention_mask.sum(dim=1) > 2).tolist()  # more than <s></s>
        if music_present is not None:
            lyrics_present = [a and b for a, b in zip(lyrics_present, music_present)]
        if all(lyrics_present):
            return music, lyrics, song_ids
        keep = [i for i, present in enumerate(lyrics_present) if present]
        if not keep:
            return None, None, None
        rows = torch.tensor(keep, device=music.device)
        if isinstance(song_ids, torch.Tensor):
            ids: SongIds = song_ids[rows.to(song_ids.device)]
        else:
            ids = [song_ids[i] for i in keep] if song_ids is not None else None
        return music[rows], lyrics[rows], ids

    # ------------------------------------------------------------------ generation
    def _generation_config(self) -> GenerationConfig:
        g = self.config.generation
        return GenerationConfig(
            num_beams=g.num_beams,
            do_sample=g.do_sample,
            top_p=g.top_p,
            max_new_tokens=g.max_new_tokens,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            early_stopping=g.early_stopping,
            forced_bos_token_id=g.forced_bos_token_id,
            forced_eos_token_id=g.forced_eos_token_id,
            decoder_start_token_id=self.config.decoder_start_token_id,
            bos_token_id=self.config.bos_token_id,
            eos_token_id=self.config.eos_token_id,
            pad_token_id=self.config.pad_token_id,
        )

    @property
    def generation_config(self) -> GenerationConfig:
        """Decoding defaults (from `config.generation`); `generate(**kwargs)` overrides them."""
        return self.bart.generation_config

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        music_embeds: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        music_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Caption token ids (B·num_return_sequences, T'), starting with decoder_start </s> <s>.

        The fused encoder runs once; Hugging Face's `generate` then decodes from its states, so
        every HF option works: `num_beams`, `do_sample`, `top_p`, `no_repeat_ngram_size`,
        `max_new_tokens`, `num_return_sequences`, `generation_config=`… Seed sampling with
        `torch.manual_seed` beforehand.
        """
        input_ids, attention_mask = self._pad_source(input_ids, attention_mask)
        encoded = self.encode(input_ids, attention_mask, music_embeds, waveform, music_mask)
        read, read_mask = self._with_memory(
            encoded.last_hidden_state, attention_mask, self._memory(encoded)
        )
        with (
            self._copying(encoded.last_hidden_state, input_ids, attention_mask),
            self._copy_head_reads_history(),
        ):
            return self.bart.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=read),
                attention_mask=read_mask,
                **generate_kwargs,
            )

    def _memory(self, encoded: RecapEncoderOutput) -> torch.Tensor | None:
        """(B, 1, d) the music memory position (`config.music_memory`), or None."""
        if self.music_memory is None or encoded.music_vector is None:
            return None
        return self.music_memory(encoded.music_vector).unsqueeze(1)  # (B, m) -> (B, 1, d)

    @staticmethod
    def _with_memory(
        states: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder attends to: the fused states (B, L, d), then the memory position
        when there is one (B, L+1, d), with the mask to match. The copy head reads the lyrics
        positions only."""
        if memory is None:
            return states, mask
        ones = mask.new_ones(mask.size(0), 1)
        return torch.cat([states, memory.to(states.dtype)], dim=1), torch.cat([mask, ones], dim=1)

    def _copying(
        self, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> contextlib.AbstractContextManager:
        """The copy head's source for one call of BART (a no-op without a copy head)."""
        if self.copy_head is None:
            return contextlib.nullcontext()
        return self.copy_head.attend(states, input_ids, attention_mask)

    @contextlib.contextmanager
    def _copy_head_reads_history(self) -> Iterator[None]:
        """With a cache BART's decoder reads only the last generated token; the copy head's
        bigram bonus also needs the one before. `prepare_inputs_for_generation` sees the whole
        sequence at every step (rows already reordered by beam search): hand it to the head
        (its coverage counts the whole caption so far too)."""
        head = self.copy_head
        if head is None or not (head.follow_bigram or head.coverage):
            yield
            return
        prepare = self.bart.prepare_inputs_for_generation

        @functools.wraps(prepare)
        def prepare_and_tell(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            head.read_history(input_ids)
            return prepare(input_ids, *args, **kwargs)

        self.bart.prepare_inputs_for_generation = prepare_and_tell  # this call only
        try:
            yield
        finally:
            del self.bart.prepare_inputs_for_generation


__all__ = ["RecapModel", "RecapOutput", "RecapEncoderOutput"]
