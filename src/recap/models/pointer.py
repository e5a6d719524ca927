"""A copy (pointer-generator) head for the small captioners: quoting the lyrics is pointing at them.

Not in the paper, and off in its `paper` preset. A small BART trained from scratch for a few
hundred steps does not learn to copy unseen words from its input (issue 11: the first line of a
test song was never stated; the captioners wrote first lines memorised from training songs). The
head mixes BART's output distribution with a distribution over the source tokens (See et al.,
2017):

    p(w) = g · softmax(logits)(w) + (1 − g) · Σ_s a_s [src_s = w],   g = σ(w_g · h)

where `a` (B, T, S) is one attention of the decoder state `h` over the encoder's output. Each key
also sees the encoder state of the *previous* source position, and a learned bonus goes to the
positions whose previous source token is the token the decoder just read: "the token after the
one I just wrote" is a direct match, so continuing a quotation needs no positional arithmetic.
A lyrics BPE splits words into pieces that recur ('M' 'eine', 'S' 'ch' 'm' 'ück' 'e': half the
first-line tokens of the demo's test songs have a previous token that occurs more than once in
the lyrics), so that match is ambiguous and quotes jumped to another occurrence ("Donnerwort" →
"Donnerwigkeit"). With `follow_bigram` a second bonus goes to the positions whose previous *two*
source tokens are the last two tokens read. When generating with a cache BART's decoder reads
only the last token; `RecapModel.generate` hands the head the whole sequence so far
(`read_history`, beams already reordered by Hugging Face).

Knowing where a quotation *ends* does: the templates quote the first four words, and a head that
only points closed its quotes after two, three or four words alike (teacher-forced P(") ≈ 0.2 at
each word boundary, issue 11). With `word_positions` > 0 each source token carries a learned
embedding of its word number (1, 2, …, capped), and, as in See et al., the context the head
points at feeds back into the gate and the vocabulary logits: pointing at word five says "the
quotation is complete". Word starts come from the tokenizer (`set_word_starts`).

Whether to continue is not the same everywhere in a caption: inside a quotation the next
source token is the right one, but a key word ("returning to Seel, erhebt and Herren") ends after
itself, and heads with fixed bonuses ran on into the lyrics ("Seel, er hat and Herren"). With
`state_bonus` the bonuses are offsets set by the decoder state, `bonus + w · h` (w starts at 0,
so the head starts as the one with fixed bonuses). No preset uses it: over six demo seeds its
quotations were no more often the right length (docs/training.md).

Word numbers stop at the cap, so past the first words the head does not know where a word ends,
and key words ran on into the next words of the lyrics ("returning to Seel, von nun an werden
mich selig and Herren"). With `word_pieces` each source token also carries a learned embedding of
its kind — begins a word, continues one, neither (punctuation) — so pointing at the piece after a
key word tells whether that word is complete.

Which words matter is partly how often they recur: the captions name a song's key words, and a
head that sees each source token alone has to count occurrences through attention, which the small
captioners did not learn (salient-word F1 37-49 % in run T, docs/results.md). With `word_counts`
> 0 each source token carries a learned embedding of how many times its word occurs in the source
(capped; words compare by their token ids, so "Herr" and "herr" are two words), the term-frequency
feature of Nallapati et al. (2016)'s feature-rich pointer-generator encoder.

A pointer without memory of what it copied repeats itself (See et al., 2017): the demo's captioners
list a key word twice ("weil, weil and gegeben") in 22-48 of their 86 test captions (run T, seed
0). With `coverage` > 0 the head sees how many times each source token has already been written in
the caption (capped) through a term that depends on the decoder state, `q · c[n]` for a learned
vector c[n] per count n: repeating the first line's words in a list may pay while repeating a
listed word does not, and the state (with the word numbers) tells the two apart. Counting written
tokens instead of summing past attention (See et al.'s coverage vector) keeps training parallel
over the caption. The small BART uses it; the fusion captioners broke on one seed each
with it (docs/training.md).

Which lyrics words a caption quotes at all is a property of the lyrics, learnt in the head
above only through the few copied tokens of each caption. With `select` the head also scores
each lyrics token — will its word appear in the caption? — from the same states (word numbers
and counts included), trained on every lyrics token by a binary cross-entropy against the
words the reference caption does contain (`selection_targets`), and adds the log-probability
of selection to where it begins to copy (words only, and not the token after the one just
written, so punctuation and small words inside a quotation stay copyable): the content selector of Gehrmann et al. (2018, "Bottom-up
abstractive summarization"), as a soft mask. The selector starts at zero (a constant bias, so
the head starts as the one without).

It is attached to BART's `lm_head` as a forward hook, so Hugging Face's `generate` (beam search,
sampling, caches) runs unchanged; the returned "logits" are log-probabilities, which every
decoding strategy and the cross-entropy treat exactly as logits. `RecapModel` sets the source
(`attend`) around each call of BART and clears it after.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class CopyHead(nn.Module):
    def __init__(
        self,
        d_model: int,
        vocab_size: int = 0,
        word_positions: int = 0,
        follow_bigram: bool = False,
        state_bonus: bool = False,
        word_pieces: bool = False,
        word_counts: int = 0,
        coverage: int = 0,
        select: bool = False,
    ) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.key_previous = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(d_model, 1)
        self.continue_bonus = nn.Parameter(torch.tensor(2.0))
        if follow_bigram:
            self.continue_bigram_bonus = nn.Parameter(torch.tensor(2.0))
        self.follow_bigram = follow_bigram
        if state_bonus:
            # (d,) → an offset of each bonus: [continue, continue_bigram]
            self.bonus_offset = nn.Linear(d_model, 2)
            nn.init.zeros_(self.bonus_offset.weight)
            nn.init.zeros_(self.bonus_offset.bias)
        self.state_bonus = state_bonus
        self.word_positions = word_positions
        if word_positions:
            # Per vocabulary id: 2 = starts a word after a space, 1 = starts with a letter (a
            # word only at the start of the text), 0 = neither. Saved with the weights.
            self.register_buffer("word_start", torch.zeros(vocab_size, dtype=torch.uint8))
            self.word_embedding = nn.Embedding(word_positions + 1, d_model)
            self.context = nn.Linear(d_model, d_model, bias=False)
            nn.init.zeros_(self.context.weight)  # starts as the plain pointer-generator
        if word_pieces and not word_positions:
            raise ValueError("word_pieces needs word_positions (the word-start table)")
        self.word_pieces = word_pieces
        if word_pieces:
            # 0 = neither, 1 = begins a word, 2 = continues one; zero: starts as the head without
            self.piece_embedding = nn.Embedding(3, d_model)
            nn.init.zeros_(self.piece_embedding.weight)
        if word_counts and not word_positions:
            raise ValueError("word_counts needs word_positions (the word-start table)")
        self.word_counts = word_counts
        if word_counts:
            # 0 = not in a word, k = the word occurs k times (capped); zero: starts as without
            self.count_embedding = nn.Embedding(word_counts + 1, d_model)
            nn.init.zeros_(self.count_embedding.weight)
        self.coverage = coverage
        if coverage:
            # (count + 1, d): a query-dependent score per times-written count; zero: starts as
            # the head without
            self.coverage_embedding = nn.Embedding(coverage + 1, d_model)
            nn.init.zeros_(self.coverage_embedding.weight)
        if select and not word_positions:
            raise ValueError("select needs word_positions (the word-start table)")
        self.select = select
        if select:
            # (d,) → the logit that a token's word is in the caption; zero: a constant, no effect
            self.selector = nn.Linear(d_model, 1)
            nn.init.zeros_(self.selector.weight)
            nn.init.zeros_(self.selector.bias)
        self._source: tuple[torch.Tensor, ...] | None = None
        self._select_logits: torch.Tensor | None = None
        self._select_bias: torch.Tensor | None = None
        self._decoder_ids: torch.Tensor | None = None
        self._history: torch.Tensor | None = None

    def set_word_starts(self, tokenizer) -> None:
        """Which vocabulary ids begin a word, from the tokenizer's text of each id."""
        if not self.word_positions:
            return
        table = torch.zeros_like(self.word_start)
        for token_id in range(min(len(tokenizer), table.numel())):
            text = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)])
            if text[:1] == " " and text[1:2].isalpha():
                table[token_id] = 2
            elif text[:1].isalpha():
                table[token_id] = 1
        self.word_start.copy_(table)

    def word_starts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) token ids → (B, S) bools: the token begins a word; it has a letter first."""
        code = self.word_start[ids]  # (B, S)
        # The text's first word has no space before it: the first letter-initial token counts.
        lettered = code > 0
        first = lettered & (lettered.long().cumsum(dim=1) == 1)
        return (code == 2) | first, lettered

    def word_numbers(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids → (B, S) word number of each token (0 before the first word),
        capped at `word_positions`."""
        starts, _ = self.word_starts(ids)
        return starts.long().cumsum(dim=1).clamp_max(self.word_positions)

    def piece_kinds(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids → (B, S) 1 where a token begins a word, 2 where it continues one
        (letters, no space before), 0 otherwise."""
        starts, lettered = self.word_starts(ids)
        return torch.where(starts, 1, torch.where(lettered, 2, 0))

    @staticmethod
    def _words(
        ids: torch.Tensor, starts: torch.Tensor, lettered: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) token ids, where words begin and which tokens have letters → the word each
        token belongs to (B, S; 0 = none, 1.. in order) and four sums per word that identify
        its token sequence (B, S, 4; rows past the last word are zero). A word is a start and
        the lettered tokens right after it, up to the next non-letter token."""
        batch, length = ids.shape
        position = torch.arange(length, device=ids.device).expand(batch, -1)  # (B, S)
        start_at = torch.where(starts, position, -1).cummax(dim=1).values  # (B, S): word's start
        breaks = (~lettered).long().cumsum(dim=1)  # (B, S): non-letter tokens so far
        at_start = breaks.gather(1, start_at.clamp_min(0))
        in_word = lettered & (start_at >= 0) & (breaks == at_start)  # no break since the start
        word = torch.where(in_word, starts.long().cumsum(dim=1), 0)  # (B, S): 1.. ; 0 = none
        # Per word: length, first id and two sums over its pieces identify its token sequence.
        piece = (position - start_at).clamp_min(0)  # (B, S): index of the token in its word
        value = (ids.long() + 1) * in_word
        features = torch.stack(
            [in_word.long(), value * starts, value * (piece + 1), value * value], dim=-1
        )  # (B, S, 4)
        per_word = torch.zeros(batch, length + 1, 4, dtype=torch.long, device=ids.device)
        per_word.scatter_add_(1, word[..., None].expand(-1, -1, 4), features)
        return word, per_word[:, 1:]  # slot 0 collected the tokens outside words

    def word_occurrences(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids and attention mask → (B, S) how many times the word each token
        belongs to occurs in its row (0 for tokens outside words), capped at `word_counts`.

        A word is a word-initial token and the letter-initial pieces right after it; two words
        are the same when their token ids are."""
        starts, lettered = self.word_starts(ids)
        word, per_word = self._words(ids, starts & (mask > 0), lettered & (mask > 0))
        same = per_word[:, :, None, 0] > 0  # (B, W, 1)
        for k in range(4):
            same = same & (per_word[:, :, None, k] == per_word[:, None, :, k])  # (B, W, W)
        counts = F.pad(same.sum(dim=-1), (1, 0))  # (B, W + 1): slot 0 = outside words
        return counts.gather(1, word).clamp_max(self.word_counts)  # (B, S)

    def selection_logits(self) -> torch.Tensor | None:
        """(B, S) the selector's logits for the source set by `attend` (None outside it, or
        without `select`)."""
        return self._select_logits

    def word_identities(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) token ids and mask → `_words`' word index and per-word sums, with words that
        also begin at a letter-initial token after a non-letter one (a quotation's first word:
        `"Meine`), not only at word-initial tokens."""
        code = self.word_start[ids]  # (B, S)
        lettered = (code > 0) & (mask > 0)
        after_break = F.pad(~lettered[:, :-1], (1, 0), value=True)
        return self._words(ids, lettered & ((code == 2) | after_break), lettered)

    def selection_targets(
        self,
        source_ids: torch.Tensor,
        source_mask: torch.Tensor,
        caption_ids: torch.Tensor,
        caption_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the selector learns: (B, S) 1.0 where a source token's word also occurs in the
        caption (B, T), as the same token sequence; and the (B, S) mask of source tokens that
        are in a word (the only ones scored). Case matters, as for the head's copies."""
        word, source_words = self.word_identities(source_ids, source_mask)
        _, caption_words = self.word_identities(caption_ids, caption_mask)
        present = caption_words[:, None, :, 0] > 0  # (B, 1, Wc)
        same = present & (source_words[:, :, None, :] == caption_words[:, None, :, :]).all(-1)
        in_caption = F.pad(same.any(dim=-1), (1, 0))  # (B, Ws + 1): slot 0 = not a word
        return in_caption.gather(1, word).float(), word > 0

    @contextmanager
    def attend(
        self, encoder_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Iterator[None]:
        """Within the block, BART's output distribution can copy from these source tokens:
        encoder_states (B, S, d), input_ids and attention_mask (B, S).

        The source side (word numbers, keys) is computed here once, not at every decoding step."""
        states = encoder_states
        if self.word_positions:
            states = states + self.word_embedding(self.word_numbers(input_ids))  # (B, S, d)
        if self.word_pieces:
            states = states + self.piece_embedding(self.piece_kinds(input_ids))  # (B, S, d)
        if self.word_counts:
            counts = self.word_occurrences(input_ids, attention_mask)  # (B, S)
            states = states + self.count_embedding(counts)  # (B, S, d)
        previous = F.pad(states[:, :-1], (0, 0, 1, 0))  # (B, S, d): state of position s - 1
        keys = self.key(states) + self.key_previous(previous)  # (B, S, d)
        self._source = (states, keys, input_ids, attention_mask)
        if self.select:
            self._select_logits = self.selector(states).squeeze(-1).float()  # (B, S)
            # Only words are selected or not: punctuation inside a quotation stays copyable.
            in_word = self.word_identities(input_ids, attention_mask)[0] > 0
            self._select_bias = F.logsigmoid(self._select_logits) * in_word  # (B, S)
        try:
            yield
        finally:
            self._source = None
            self._select_logits = self._select_bias = None
            self._decoder_ids = None
            self._history = None

    def read_history(self, decoder_ids: torch.Tensor) -> None:
        """(B', t) every token generated so far, before the decoder reads the last of them."""
        self._history = decoder_ids if self._source is not None else None

    def _history_of(self, read: torch.Tensor) -> torch.Tensor | None:
        """(B', t) the caption generated so far, ending with the one token the decoder reads
        now (B', 1); None when the generation history does not line up with it."""
        history = self._history
        if history is None or history.size(0) != read.size(0):
            return None
        return history if torch.equal(history[:, -1:], read) else None

    def _before_read(self, read: torch.Tensor) -> torch.Tensor | None:
        """(B', T) the token before each read token (-2 where there is none), or None when the
        generation history does not line up with what the decoder reads."""
        if read.size(1) > 1:  # the whole caption at once (training, or no cache)
            return F.pad(read[:, :-1], (1, 0), value=-2)
        history = self._history_of(read)
        if history is None or history.size(1) < 2:
            return None
        return history[:, -2:-1]

    def _written(self, read: torch.Tensor, ids: torch.Tensor) -> torch.Tensor | None:
        """(B', T, S) how many times each source token has been read by the decoder up to and
        including each read position (the caption so far), capped at `coverage`; None when the
        generation history does not line up with what the decoder reads."""
        if read.size(1) > 1:  # the whole caption at once: count along it
            same = read[:, :, None] == ids[:, None, :]  # (B, T, S)
            return same.long().cumsum(dim=1).clamp_max(self.coverage)
        history = self._history_of(read)
        if history is None:
            return None
        same = history[:, :, None] == ids[:, None, :]  # (B', t, S)
        return same.long().sum(dim=1, keepdim=True).clamp_max(self.coverage)  # (B', 1, S)

    def read_decoder_ids(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of BART's decoder: remember the tokens it reads, (B', T) — the whole
        shifted caption in training, the last token per step when generating with a cache."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._decoder_ids = ids if self._source is not None else None

    def hook(self, _module: nn.Module, args: tuple[torch.Tensor, ...], logits: torch.Tensor):
        """Forward hook of `lm_head`: its input is the decoder state (B', T, d), its output the
        vocabulary logits (B', T, V); returns log p(w) of the mixture. B' is B times the number
        of beams during beam search (HF repeats each row's encoder output that way)."""
        if self._source is None:
            return logits
        hidden = args[0]
        states, keys, ids, mask = self._source
        selected = self._select_bias
        if hidden.size(0) != states.size(0):
            repeat = hidden.size(0) // states.size(0)
            states, keys, ids, mask = (
                t.repeat_interleave(repeat, dim=0) for t in (states, keys, ids, mask)
            )
            if selected is not None:
                selected = selected.repeat_interleave(repeat, dim=0)
        query = self.query(hidden)  # (B, T, d)
        scores = query @ keys.transpose(1, 2) / math.sqrt(keys.size(-1))  # (B, T, S)
        read = self._decoder_ids
        follows = None
        if read is not None and read.shape == hidden.shape[:2]:
            previous_ids = F.pad(ids[:, :-1], (1, 0), value=-1)  # (B, S): source token at s - 1
            follows = read[:, :, None] == previous_ids[:, None, :]  # (B, T, S)
        if selected is not None:
            # log P(selected) per source word token (B, 1, S): where to *begin* copying. The token
            # after the one just written is exempt, so a quotation runs on through words the
            # selector would not pick ("Warum sollt' ich mich").
            bias = selected[:, None, :].to(scores.dtype)
            scores = scores + (bias if follows is None else bias * ~follows)
        if follows is not None:
            written = self._written(read, ids) if self.coverage else None
            if written is not None:
                per_count = query @ self.coverage_embedding.weight.T  # (B, T, coverage + 1)
                per_count = per_count / math.sqrt(keys.size(-1))
                scores = scores + per_count.gather(2, written)  # (B, T, S)
            bonus = self.continue_bonus
            bigram_bonus = self.continue_bigram_bonus if self.follow_bigram else None
            if self.state_bonus:
                offset = self.bonus_offset(hidden)  # (B, T, 2)
                bonus = bonus + offset[..., :1]  # (B, T, 1): broadcasts over S
                if bigram_bonus is not None:
                    bigram_bonus = bigram_bonus + offset[..., 1:]
            scores = scores + bonus * follows
            before = self._before_read(read) if self.follow_bigram else None
            if before is not None:
                ids_before = F.pad(ids[:, :-2], (2, 0), value=-1)  # (B, S): source token at s - 2
                both = follows & (before[:, :, None] == ids_before[:, None, :])  # (B, T, S)
                scores = scores + bigram_bonus * both
        scores = scores.float().masked_fill(mask[:, None, :] == 0, float("-inf"))
        attention = scores.softmax(dim=-1)  # (B, T, S)
        index = ids[:, None, :].expand(-1, hidden.size(1), -1)  # (B, T, S)
        copy = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        copy.scatter_add_(2, index, attention)  # (B, T, V): attention summed per token id
        if self.word_positions:
            # What the head points at (B, T, d) informs whether to copy and what else to write.
            context = self.context(attention.to(states.dtype) @ states)
            hidden = hidden + context
            logits = logits + F.linear(context, _module.weight)
        generate = torch.sigmoid(self.gate(hidden).float())  # (B, T, 1)
        probs = generate * logits.float().softmax(dim=-1) + (1.0 - generate) * copy
        return probs.clamp_min(1e-12).log().to(logits.dtype)
