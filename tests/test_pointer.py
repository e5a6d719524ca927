"""The copy (pointer-generator) head: a distribution that can quote the lyrics, and word numbers
that tell it where a quotation of the first words ends."""

from __future__ import annotations

import pytest
import torch

from recap.models.config import RecapConfig
from recap.models.model import RecapModel
from recap.models.tokenizer import train_bpe_tokenizer
from recap.utils import RecapError

TEXTS = ["Meine Seel’ erhebt den Herren; und mein Geist freut sich", "1. Was mein Gott will"] * 20


def copying_model(**overrides) -> RecapModel:
    torch.manual_seed(0)
    settings = {"copy_head": True, "copy_word_positions": 8, **overrides}
    config = RecapConfig.preset("recap", "tiny", **settings)
    return RecapModel(config).eval()


def test_word_numbers_follow_the_words_of_the_text_not_its_tokens():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer))
    model.attach_tokenizer(tokenizer)
    head = model.copy_head
    for text, words in [
        ("Meine Seel’ erhebt den Herren; und", ["Meine", "Seel", "erhebt", "den", "Herren", "und"]),
        ("1. Was mein Gott will", ["Was", "mein", "Gott", "will"]),
    ]:
        ids = torch.tensor([tokenizer(text)["input_ids"]])  # (1, S)
        numbers = head.word_numbers(ids)[0].tolist()
        tokens = tokenizer.convert_ids_to_tokens(ids[0])
        # the token that begins word k carries number k; a word's later pieces keep it
        for k, word in enumerate(words, start=1):
            piece = tokenizer.convert_tokens_to_string([tokens[numbers.index(k)]]).strip()
            assert piece and (word.startswith(piece) or piece.startswith(word)), (k, piece)
        assert numbers[0] == 0 and max(numbers) == len(words)  # <s> precedes the first word
        assert numbers == sorted(numbers)


def test_piece_kinds_mark_where_each_word_ends_past_the_capped_numbers():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer), copy_word_positions=2, copy_word_pieces=True)
    model.attach_tokenizer(tokenizer)
    text = "Meine Seel’ erhebt den Herren, und mein Geist freuet sich Gottes"
    ids = torch.tensor([tokenizer(text)["input_ids"]])  # (1, S)
    kinds = model.copy_head.piece_kinds(ids)[0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    words: list[str] = []  # rebuilt from the kinds alone: a word ends where no piece continues it
    for token, kind in zip(tokens, kinds):
        piece = tokenizer.convert_tokens_to_string([token]).strip()
        if kind == 1:
            words.append(piece)
        elif kind == 2:
            words[-1] += piece
    assert words == text.replace("’", "").replace(",", "").split()
    assert max(model.copy_head.word_numbers(ids)[0].tolist()) == 2  # the numbers say no more


@pytest.mark.parametrize(
    ("option", "needs"),
    [
        ({"copy_word_pieces": True}, "word_positions"),  # the head's own check (ValueError)
        ({"copy_word_counts": 4}, "copy_word_positions"),  # the config's (RecapError)
        ({"copy_coverage": 2}, None),
        ({"copy_select_weight": 0.5}, "copy_word_positions"),
    ],
)
def test_optional_copy_features_start_as_the_head_without_them(option, needs):
    ids = torch.tensor([SOURCE])
    music = torch.zeros(1, 5, RecapConfig.preset("recap", "tiny").music_dim)
    labels = torch.tensor([[11, 12, 13, 2]])
    plain = copying_model()
    extended = copying_model(**option)
    extended.load_state_dict(plain.state_dict(), strict=False)  # its new weights stay at 0
    with torch.no_grad():
        a = plain(ids, torch.ones_like(ids), labels=labels, music_embeds=music).logits
        b = extended(ids, torch.ones_like(ids), labels=labels, music_embeds=music).logits
    torch.testing.assert_close(a, b)
    if needs:
        with pytest.raises((ValueError, RecapError), match=needs):
            copying_model(copy_word_positions=0, **option)


def test_word_numbers_are_capped():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer))
    model.attach_tokenizer(tokenizer)
    ids = torch.tensor(
        [tokenizer("und mein Geist freut sich und mein Geist freut sich")["input_ids"]]
    )
    assert int(model.copy_head.word_numbers(ids).max()) == 8


def test_the_head_returns_a_distribution_that_can_copy_unseen_source_tokens():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer))
    model.attach_tokenizer(tokenizer)
    ids = torch.tensor([tokenizer("Meine Seel’ erhebt den Herren")["input_ids"]])
    labels = ids.clone()
    music = torch.randn(1, 5, model.config.music_dim)
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-30.0)  # the gate says: copy
        out = model(ids, torch.ones_like(ids), labels=labels, music_embeds=music)
    probs = out.logits.exp()  # the head returns log-probabilities
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]), rtol=0, atol=1e-4)
    on_source = probs[..., ids[0].unique()].sum(-1)
    assert bool((on_source > 0.99).all())  # all mass on the lyrics' own tokens


def test_word_starts_are_saved_with_the_weights(tmp_path):
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer))
    model.attach_tokenizer(tokenizer)
    assert int((model.copy_head.word_start > 0).sum()) > 10
    model.save_pretrained(tmp_path / "m", tokenizer=tokenizer)
    loaded = RecapModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.copy_head.word_start, model.copy_head.word_start)


def _continuation_model(bigram: bool, **overrides) -> RecapModel:
    model = copying_model(copy_word_positions=0, copy_follow_bigram=bigram, **overrides)
    head = model.copy_head
    with torch.no_grad():
        head.gate.bias.fill_(-30.0)  # always copy
        head.query.weight.zero_()  # no content match: only the continuation bonuses count
        head.query.bias.zero_()
        head.continue_bonus.fill_(20.0)
        if bigram:
            head.continue_bigram_bonus.fill_(20.0)
    return model


# <s> a b x c b y </s>: after "b" the next source token is x or y; only the token before "b"
# tells which, so a quotation of the whole source needs the bigram bonus.
SOURCE = [0, 10, 11, 12, 13, 11, 14, 2]


def _generate(model: RecapModel, **kwargs) -> list[int]:
    ids = torch.tensor([SOURCE])
    music = torch.zeros(1, 5, model.config.music_dim)
    out = model.generate(
        ids, torch.ones_like(ids), music_embeds=music, max_new_tokens=12, do_sample=False, **kwargs
    )
    tokens = out[0].tolist()
    start = tokens.index(0)  # after the decoder start token
    return tokens[start : tokens.index(2, start) + 1] if 2 in tokens[start:] else tokens[start:]


def test_bigram_bonus_resolves_a_recurring_token_when_teacher_forced():
    ids = torch.tensor([SOURCE])
    music = torch.zeros(1, 5, RecapConfig.preset("recap", "tiny").music_dim)
    for bigram, expected in ((True, [12, 14]), (False, None)):
        model = _continuation_model(bigram)
        with torch.no_grad():
            out = model(ids, torch.ones_like(ids), labels=ids, music_embeds=music)
        # the decoder reads </s> <s> a b x c b y: predictions after the two b's are at 3 and 6
        after_b = out.logits[0, [3, 6]]  # (2, V)
        if expected:
            assert after_b.argmax(-1).tolist() == expected
        else:  # one bonus alone cannot tell x from y
            torch.testing.assert_close(after_b[:, 12], after_b[:, 14])


def test_bigram_bonus_holds_when_generating_with_a_cache_and_beams():
    model = _continuation_model(True)
    uncached = _generate(model, num_beams=1, use_cache=False)
    assert uncached == SOURCE  # the whole source quoted, through the recurring "b"
    assert _generate(model, num_beams=1) == uncached
    assert _generate(model, num_beams=3) == uncached
    assert model.copy_head._history is None  # the generation history is not kept afterwards
    # prepare_inputs_for_generation is BART's own again
    assert "prepare_inputs_for_generation" not in vars(model.bart)


def test_state_bonus_starts_as_the_fixed_bonus_and_can_stop_a_quotation():
    fixed = _continuation_model(True)
    moving = _continuation_model(True, copy_state_bonus=True)
    moving.load_state_dict(fixed.state_dict(), strict=False)  # the offset layer stays at 0
    assert _generate(moving, num_beams=3) == _generate(fixed, num_beams=3) == SOURCE
    with torch.no_grad():  # the state says "do not continue": no bonus leads the pointer on
        moving.copy_head.bonus_offset.bias.fill_(-20.0)
    assert _generate(moving, num_beams=3) != SOURCE


def test_word_occurrences_count_each_word_of_the_source():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer), copy_word_counts=4)
    model.attach_tokenizer(tokenizer)
    text = "Mein Herren Geist, und Herren; freut Herren Geist Herren Gott"
    ids = torch.tensor([tokenizer(text)["input_ids"]] * 2)  # (2, S)
    mask = torch.ones_like(ids)
    mask[1, -6:] = 0  # the second row's last two words are padding
    counts = model.copy_head.word_occurrences(ids, mask)
    starts, _ = model.copy_head.word_starts(ids)
    per_word = [c for c, s in zip(counts[0].tolist(), starts[0].tolist()) if s]
    # Mein ×1, Herren ×4, Geist ×2, und ×1, freut ×1, Gott ×1
    assert per_word == [1, 4, 2, 1, 4, 1, 4, 2, 4, 1]
    # every piece of a word carries its count; punctuation and <s>, </s> carry none
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    for token, count in zip(tokens, counts[0].tolist()):
        piece = tokenizer.convert_tokens_to_string([token]).strip()
        assert (count == 0) == (not piece[:1].isalpha()), (piece, count)
    # padding is not counted, and carries nothing itself: Herren occurs 3 times in the second row
    assert counts[1, -6:].tolist() == [0] * 6
    assert counts[1, 2].item() == 3 and counts[1, 4].item() == 2
    capped = copying_model(vocab_size=len(tokenizer), copy_word_counts=3)
    capped.attach_tokenizer(tokenizer)
    assert capped.copy_head.word_occurrences(ids, mask)[0].max().item() == 3


def test_coverage_counts_the_caption_so_far_alike_in_training_and_generation():
    head = copying_model(copy_coverage=2).copy_head
    ids = torch.tensor([SOURCE])  # <s> a b x c b y </s>
    read = torch.tensor([[2, 0, 11, 12, 11]])  # the decoder reads </s> <s> b x b
    written = head._written(read, ids)  # (1, T, S)
    # "b" (source positions 2 and 5) was read 0, 0, 1, 1, 2 times up to each position
    assert written[0, :, 2].tolist() == [0, 0, 1, 1, 2] == written[0, :, 5].tolist()
    assert written[0, :, 3].tolist() == [0, 0, 0, 1, 1]  # x
    assert written[0, :, 7].tolist() == [1, 1, 1, 1, 1]  # </s>, the decoder start
    assert head._written(torch.tensor([[2, 11, 11, 11]]), ids)[0, -1, 2].item() == 2  # capped
    # generating with a cache, the decoder reads one token; the history holds the caption
    head.read_history(read)  # outside `attend` there is no source: nothing is kept
    assert head._history is None
    head._history = read
    torch.testing.assert_close(head._written(read[:, -1:], ids), written[:, -1:])
    assert head._written(torch.tensor([[12]]), ids) is None  # a history that does not line up


def test_coverage_is_the_same_with_and_without_a_cache_and_changes_what_is_copied():
    ids = torch.tensor([SOURCE])
    music = torch.zeros(1, 5, RecapConfig.preset("recap", "tiny").music_dim)

    def scores(model: RecapModel, **kwargs) -> tuple[list[int], torch.Tensor]:
        out = model.generate(
            ids,
            torch.ones_like(ids),
            music_embeds=music,
            max_new_tokens=8,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        return out.sequences[0].tolist(), torch.stack(out.scores, dim=1)[0]

    plain = copying_model(copy_word_positions=0)
    covering = copying_model(copy_word_positions=0, copy_coverage=2)
    covering.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        for model in (plain, covering):
            model.copy_head.gate.bias.fill_(-30.0)  # always copy: the pointer decides
    start, zero = scores(plain), scores(covering)  # the coverage embedding starts at 0
    assert start[0] == zero[0]
    torch.testing.assert_close(start[1], zero[1])
    with torch.no_grad():
        covering.copy_head.coverage_embedding.weight.normal_(0.0, 5.0)
    cached, uncached = scores(covering), scores(covering, use_cache=False)
    assert cached[0] == uncached[0]
    torch.testing.assert_close(cached[1], uncached[1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cached[1], start[1])
    assert _generate(covering, num_beams=3) == _generate(covering, num_beams=3, use_cache=False)
    with pytest.raises(RecapError, match="copy_head"):
        RecapConfig.preset("recap", "tiny", copy_coverage=2)


def test_selection_targets_are_the_source_words_the_caption_contains():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer), copy_select_weight=1.0)
    model.attach_tokenizer(tokenizer)
    head = model.copy_head
    lyrics = "Meine Seel’ erhebt den Herren; und mein Geist freut sich"
    caption = 'It opens with "Meine Seel’ erhebt". Its key words: Herren and Geister.'
    source = torch.tensor([tokenizer(lyrics)["input_ids"]])  # (1, S)
    target = torch.tensor([tokenizer(caption)["input_ids"]])  # (1, T)
    targets, in_word = head.selection_targets(
        source, torch.ones_like(source), target, torch.ones_like(target)
    )
    words: list[tuple[str, list[float]]] = []  # each word with the labels of its pieces
    starts, _ = head.word_starts(source)
    tokens = tokenizer.convert_ids_to_tokens(source[0])
    for token, start, label, scored in zip(
        tokens, starts[0].tolist(), targets[0].tolist(), in_word[0].tolist()
    ):
        piece = tokenizer.convert_tokens_to_string([token]).strip()
        if not scored:
            assert label == 0.0 and not piece[:1].isalpha(), piece
        elif start or not words:
            words.append((piece, [label]))
        else:
            words[-1] = (words[-1][0] + piece, [*words[-1][1], label])
    assert all(len(set(labels)) == 1 for _, labels in words)  # every piece shares its word's
    chosen = {word: labels[0] for word, labels in words}
    # "Meine" opens a quotation in the caption (no space before it) and is still the same word;
    # "Geist" is only the start of the caption's "Geister"; "Seel" is cut by the apostrophe
    assert {w for w, label in chosen.items() if label} == {"Meine", "Seel", "erhebt", "Herren"}
    assert chosen["Geist"] == 0.0 and chosen["und"] == 0.0
    # padding in the caption names no word
    padded = torch.cat([target, target.new_full((1, 4), 1)], dim=1)
    mask = torch.cat([torch.ones_like(target), torch.zeros(1, 4, dtype=target.dtype)], dim=1)
    again, _ = head.selection_targets(source, torch.ones_like(source), padded, mask)
    assert torch.equal(again, targets)


def test_the_selector_learns_which_words_captions_quote_and_steers_the_copies():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer), copy_select_weight=1.0).train()
    model.attach_tokenizer(tokenizer)
    source = torch.tensor([tokenizer("Meine Seel’ erhebt den Herren; und mein Geist")["input_ids"]])
    ones = torch.ones_like(source)
    labels = torch.tensor([tokenizer("Herren and Geist")["input_ids"]])
    music = torch.zeros(1, 5, model.config.music_dim)
    chosen, in_word = model.copy_head.selection_targets(
        source, ones, labels, torch.ones_like(labels)
    )
    chosen_ids = source[0][chosen[0] > 0].unique()
    word_ids = source[0][in_word[0]].unique()

    def copied_mass() -> float:
        """The share of the chosen words' tokens in what is copied of words, when the gate
        says: copy."""
        with torch.no_grad():
            model.copy_head.gate.bias.fill_(-30.0)
            probs = model(source, ones, labels=labels, music_embeds=music).logits.exp()
            model.copy_head.gate.bias.zero_()
        return float((probs[0, :, chosen_ids].sum(-1) / probs[0, :, word_ids].sum(-1)).mean())

    before = copied_mass()
    optimizer = torch.optim.Adam(model.copy_head.selector.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        out = model(source, ones, labels=labels, music_embeds=music)
        optimizer.zero_grad()
        out.select_loss.backward()
        optimizer.step()
        losses.append(out.select_loss.item())
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        states = model.encode(source, ones, music).last_hidden_state
        with model.copy_head.attend(states, source, ones):
            logits = model.copy_head.selection_logits()[0]
    scored = in_word[0]
    assert bool((logits[scored & (chosen[0] > 0)] > 0).all())
    assert bool((logits[scored & (chosen[0] == 0)] < 0).all())
    # the copies follow the selector: most of the copied mass now goes to the chosen words (not
    # all: after <s> the first word "Meine" continues the source and is exempt)
    assert before < 0.6 < 0.85 < copied_mass()


def test_a_quotation_runs_on_through_words_the_selector_would_not_pick():
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    model = copying_model(vocab_size=len(tokenizer), copy_select_weight=1.0)
    model.attach_tokenizer(tokenizer)
    source = torch.tensor([tokenizer("Meine Seel’ erhebt den Herren; und mein Geist")["input_ids"]])
    ones = torch.ones_like(source)
    music = torch.zeros(1, 5, model.config.music_dim)
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-30.0)  # the gate says: copy
        model.copy_head.selector.bias.fill_(-20.0)  # the selector picks no word at all
        labels = source[:, 1:]  # the caption quotes the lyrics: decoder reads <s> Meine Seel…
        probs = model(source, ones, labels=labels, music_embeds=music).logits.exp()[0]  # (T, V)
    # having written a source token (position t reads labels[t - 1]), the token after it in
    # the lyrics (labels[t]) can still be copied; every other word is shut out (weight e^-20)
    steps = torch.arange(1, labels.size(1))
    successors = probs[steps, labels[0, 1:]]
    assert bool((successors > 0.1).all()), successors
    words = source[0][model.copy_head.word_identities(source, ones)[0][0] > 0].unique()
    assert float(probs[0, words].sum()) < 1e-6  # reading the start token: no word begins
