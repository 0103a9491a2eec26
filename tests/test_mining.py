"""In-batch hard negatives (reid.mining): another person, a different text, valid; used by the
criterion's cloth_match and the model's fusion head."""

from __future__ import annotations

import torch

from reid.mining import hardest_negatives, text_hashes


def test_text_hashes_equal_exactly_for_equal_token_sequences_whatever_the_padding():
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 7, 9, 3, 5, 5], [2, 9, 7, 3, 0, 0], [2, 7, 9, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    h = text_hashes(ids, mask)
    assert h[0] == h[1] == h[3]  # the same 4 tokens (row 1's padding positions hold junk ids)
    assert h[0] != h[2]  # same tokens, other order
    short = text_hashes(torch.tensor([[2, 7, 9, 3]]), torch.ones(1, 4, dtype=torch.long))
    assert short[0] == h[0]  # padded to another length
    prefix = text_hashes(torch.tensor([[2, 7, 9, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert prefix[0] != h[0]
    many = text_hashes(torch.randint(1, 1000, (2000, 30)), torch.ones(2000, 30, dtype=torch.long))
    assert len(set(many.tolist())) == 2000


def test_the_hardest_negative_is_another_person_with_another_text_and_valid():
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                        [0.1, 0.2, 0.3, 0.4, 0.5]])
    query_pids, key_pids = torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3, 4])
    query_texts, key_texts = torch.tensor([10, 11]), torch.tensor([10, 11, 10, 12, 13])
    valid = torch.tensor([True, True, True, False, True])
    index, has = hardest_negatives(sim, query_pids, key_pids)
    assert index.tolist() == [1, 4] and has.all()  # pids only
    index, has = hardest_negatives(sim, query_pids, key_pids, query_texts, key_texts, valid)
    # row 0: key 0 is itself, key 1 is taken next (another person, text 11); row 1: key 4
    assert index.tolist() == [1, 4]
    index, has = hardest_negatives(sim[:1, 2:], query_pids[:1], key_pids[2:], query_texts[:1], key_texts[2:], valid[2:])
    # key 2 (0.7) says text 10 like the query: a false negative; key 3 invalid: key 4 is the hardest left
    assert index.tolist() == [2] and has.tolist() == [True]
    index, has = hardest_negatives(sim[:1, :1], query_pids[:1], key_pids[:1])
    assert has.tolist() == [False]


def test_cloth_match_never_takes_the_rows_own_clothing_text_as_its_hard_negative():
    """Two people in the same clothing text: the pair form's hard negative of each skips the other
    (it would be a correct description) and takes the next most similar text."""
    from reid.config import DisentangleConfig
    from reid.data import keys as K
    from reid.losses.criterion import Criterion

    dcfg = DisentangleConfig()
    for name in ("info_nce", "cls", "bio", "cloth", "cloth_adv", "decouple"):
        setattr(dcfg.loss_weights, name, 0.0)
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]), dim=1)
    batch = {K.PIDS: torch.tensor([0, 1, 2]), K.CLOTH_VALID: torch.tensor([True, True, True]),
             K.CLOTH_INPUT_IDS: torch.tensor([[2, 5, 3], [2, 5, 3], [2, 6, 3]]),
             K.CLOTH_ATTENTION_MASK: torch.ones(3, 3, dtype=torch.long)}
    out = {"cloth_image_embeds": image, "cloth_text_embeds": text, "neg_cloth_text_embeds": text.flip(0),
           "cloth_match_bias": torch.zeros(1), "temperature": torch.ones(1)}
    criterion = Criterion(dcfg)
    got = criterion(out, batch)[1]["cloth_match"]

    from reid.losses import terms as T

    # rows 0 and 1 share text [2 5 3]: each one's hard negative is text 2, not the other's identical text
    hard = torch.tensor([2, 2, 0])
    texts = torch.cat([text, text.flip(0), text[hard]])
    want = T.pair_match(image.repeat(3, 1), texts, torch.tensor([1.0] * 3 + [0.0] * 6), torch.ones(1), torch.zeros(1),
                        weight=torch.full((9,), 1 / 3), denom=3.0)
    torch.testing.assert_close(got, want)
