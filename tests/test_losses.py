import math

import pytest
import torch
import torch.nn.functional as F

from recap.models.losses import (
    caption_loss,
    cosine_alignment_loss,
    first_of_each_song,
    infonce_alignment_loss,
    masked_mean,
    recap_loss,
    reconstruction_loss,
    selection_loss,
)

PAD = 1


def test_caption_loss_masks_padding_by_default():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[4, 5, 6, PAD, PAD], [7, 8, 9, 10, 2]])
    real = labels != PAD
    by_hand = -F.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    assert caption_loss(logits, labels, PAD) == pytest.approx(by_hand[real].mean().item(), rel=1e-6)
    # The reference codebases trained on the padding too: the flag reproduces that.
    with_pad = caption_loss(logits, labels, PAD, include_padding=True)
    assert with_pad == pytest.approx(by_hand.mean().item(), rel=1e-6)
    assert abs(with_pad.item() - by_hand[real].mean().item()) > 1e-3


def test_caption_loss_always_ignores_minus_100():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[3, 4, -100, -100]])
    expected = F.cross_entropy(logits[0, :2], labels[0, :2])
    assert caption_loss(logits, labels, PAD, include_padding=True) == pytest.approx(expected.item())


def test_masked_mean_ignores_padding_and_survives_empty_rows():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [2.0], [2.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = masked_mean(x, mask)
    assert out[0].item() == pytest.approx(2.0)
    assert out[1].item() == 0.0  # no NaN for an all-padding row
    assert masked_mean(x, None)[0].item() == pytest.approx(104.0 / 3)


def test_cosine_loss_is_zero_for_aligned_and_one_for_orthogonal_pairs():
    music = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert cosine_alignment_loss(music, 3 * music).item() == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.tensor([[0.0, 0.0, 5.0], [7.0, 0.0, 0.0]])
    assert cosine_alignment_loss(music, orthogonal).item() == pytest.approx(1.0, abs=1e-6)
    assert cosine_alignment_loss(music, -music).item() == pytest.approx(2.0, abs=1e-6)


def test_deduplication_counts_each_song_once():
    assert first_of_each_song(["b", "a", "b", "c", "a"], 5, torch.device("cpu")).tolist() == [
        0,
        1,
        3,
    ]
    assert first_of_each_song(torch.tensor([7, 7, 7]), 3, torch.device("cpu")).tolist() == [0]
    music = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    lyrics = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # song 5 twice (aligned), 9 once
    # Without ids: mean cos = 2/3; counting song 5 once: mean cos = 1/2.
    assert cosine_alignment_loss(music, lyrics).item() == pytest.approx(1 / 3, abs=1e-6)
    assert cosine_alignment_loss(music, lyrics, [5, 5, 9]).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError):
        first_of_each_song([1, 2], 3, torch.device("cpu"))


def test_infonce_equals_a_hand_computation():
    torch.manual_seed(2)
    music, lyrics, t = torch.randn(3, 4), torch.randn(3, 4), 0.3
    total = 0.0
    for i in range(3):
        sims = [
            float(torch.dot(music[i], lyrics[j]) / (music[i].norm() * lyrics[j].norm()))
            for j in range(3)
        ]
        total += -math.log(math.exp(sims[i] / t) / sum(math.exp(s / t) for s in sims))
    assert infonce_alignment_loss(music, lyrics, temperature=t).item() == pytest.approx(
        total / 3, rel=1e-5
    )


def test_infonce_drops_duplicate_songs_from_the_negatives():
    torch.manual_seed(3)
    music, lyrics = torch.randn(2, 4), torch.randn(2, 4)
    # Row 2 repeats song "x": kept, it would be its own positive scored as a negative.
    music3, lyrics3 = torch.cat([music, music[:1]]), torch.cat([lyrics, lyrics[:1]])
    deduped = infonce_alignment_loss(music3, lyrics3, ["x", "y", "x"])
    assert deduped.item() == pytest.approx(infonce_alignment_loss(music, lyrics).item(), rel=1e-6)
    assert abs(infonce_alignment_loss(music3, lyrics3).item() - deduped.item()) > 1e-3
    # One song: no negatives, nothing to contrast.
    assert infonce_alignment_loss(music3, lyrics3, [1, 1, 1]).item() == pytest.approx(0.0)


def test_recap_loss_combines_named_terms():
    torch.manual_seed(4)
    logits, labels = torch.randn(2, 3, 9), torch.tensor([[4, 5, PAD], [6, 7, 8]])
    music, lyrics = torch.randn(2, 5), torch.randn(2, 5)
    terms = recap_loss(logits, labels, music, lyrics, align_weight=0.02)
    assert terms.loss.item() == pytest.approx(
        terms.caption_loss.item() + 0.02 * terms.align_loss.item(), rel=1e-6
    )
    assert terms.align_loss.item() == pytest.approx(
        cosine_alignment_loss(music, lyrics).item(), rel=1e-6
    )
    lyrics_only = recap_loss(logits, labels)
    assert lyrics_only.align_loss.item() == 0.0
    assert lyrics_only.loss.item() == pytest.approx(lyrics_only.caption_loss.item())
    infonce = recap_loss(logits, labels, music, lyrics, align_kind="infonce", temperature=0.3)
    assert infonce.align_loss.item() == pytest.approx(
        infonce_alignment_loss(music, lyrics, temperature=0.3).item(), rel=1e-6
    )
    names = {"loss", "caption_loss", "align_loss", "reconstruct_loss", "select_loss"}
    assert set(terms.to_dict()) == names
    assert terms.reconstruct_loss.item() == 0.0  # no reconstruction logits given
    assert terms.select_loss.item() == 0.0  # no selector given


def test_selection_term_counts_the_masked_tokens_and_is_weighted():
    logits, labels = torch.randn(2, 3, 9), torch.tensor([[4, 5, PAD], [6, 7, 8]])
    select_logits = torch.tensor([[2.0, -1.0, 50.0], [0.0, 3.0, -50.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])  # the ±50 are not scored
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        select_logits[mask], targets[mask]
    )
    chosen = selection_loss(select_logits, targets, mask)
    assert chosen.item() == pytest.approx(expected.item(), rel=1e-6)
    terms = recap_loss(logits, labels, select=(select_logits, targets, mask), select_weight=0.5)
    assert terms.select_loss.item() == pytest.approx(chosen.item(), rel=1e-6)
    assert terms.loss.item() == pytest.approx(terms.caption_loss.item() + 0.5 * chosen.item())
    unweighted = recap_loss(logits, labels, select=(select_logits, targets, mask))
    assert unweighted.loss.item() == pytest.approx(unweighted.caption_loss.item())


def test_reconstruction_term_reads_every_lyrics_token_and_is_weighted():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 11), torch.randint(0, 11, (2, 4))
    ids = torch.randint(3, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    perfect = torch.full((2, 5, 11), -30.0).scatter(2, ids[..., None], 30.0)  # (B, L, V)
    assert reconstruction_loss(perfect, ids, mask).item() == pytest.approx(0.0, abs=1e-6)
    wrong = perfect.roll(1, dims=2)
    # padded positions do not count: corrupting them changes nothing
    padded = wrong.clone()
    padded[1, 3:] = perfect[1, 3:]
    assert reconstruction_loss(padded, ids, mask) == pytest.approx(
        reconstruction_loss(wrong, ids, mask)
    )
    terms = recap_loss(
        logits, labels, reconstruct_logits=wrong, input_ids=ids, attention_mask=mask,
        reconstruct_weight=0.5,
    )  # fmt: skip
    assert terms.reconstruct_loss.item() > 10
    assert terms.loss.item() == pytest.approx(
        terms.caption_loss.item() + 0.5 * terms.reconstruct_loss.item(), rel=1e-6
    )
