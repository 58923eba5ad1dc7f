"""data.collate's preference pairs: one TokenizedPair for DPO (keep the reply starts) and reward models (keep the
reply ends), checked by hand on small id lists."""

from rlhf_lab.data.collate import TokenizedPair, fit_pair


def _pair():
    return TokenizedPair([1, 2, 3], [10, 11, 12, 13], [20, 21], uid=7, reply_lengths=(4, 2))


def test_a_pair_that_fits_is_kept_whole_either_way():
    pair = _pair()
    assert pair.chosen == [1, 2, 3, 10, 11, 12, 13] and pair.rejected == [1, 2, 3, 20, 21] and pair.length == 7
    for keep in ("start", "end"):
        assert fit_pair(pair, 7, "drop", keep) == pair


def test_keep_start_cuts_both_replies_to_the_room_the_prompt_leaves():
    cut = fit_pair(_pair(), 5, "truncate", "start")  # room 5 - 3 = 2 tokens per reply
    assert (cut.prompt_ids, cut.chosen_ids, cut.rejected_ids, cut.uid) == ([1, 2, 3], [10, 11], [20, 21], 7)
    assert cut.reply_lengths == (4, 2)  # the lengths before the cut
    assert fit_pair(_pair(), 6, "drop", "start") is None
    assert fit_pair(_pair(), 3, "truncate", "start") is None  # the prompt alone fills max_length: no room
    assert fit_pair(TokenizedPair([1], [], [5]), 8, "truncate", "start") is None  # an empty reply


def test_keep_end_keeps_the_last_tokens_of_each_sequence():
    cut = fit_pair(_pair(), 5, "truncate", "end")
    # prompt + chosen = 1 2 3 10 11 12 13 -> last 5; prompt + rejected = 1 2 3 20 21 fits as it is
    assert cut.prompt_ids == [] and cut.chosen == [3, 10, 11, 12, 13] and cut.rejected == [1, 2, 3, 20, 21]
    assert cut.uid == 7 and cut.length == 5 and cut.reply_lengths == (4, 2)
    assert fit_pair(_pair(), 6, "drop", "end") is None


def test_tokenize_pairs_keeps_the_reply_lengths_before_the_cut():
    from rlhf_lab.data import load_pairs
    from rlhf_lab.data.collate import tokenize_pairs
    from rlhf_lab.data.templates import render_response
    from rlhf_lab.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-random")
    pairs, _ = load_pairs("hh-rlhf:helpful-base", split="train", limit=6)
    whole, _ = tokenize_pairs(pairs, tokenizer, template="chat", max_length=10_000, truncation="drop", keep="end")
    cut, dropped = tokenize_pairs(pairs, tokenizer, template="chat", max_length=48, truncation="truncate", keep="end")
    assert dropped == 0 and [p.reply_lengths for p in cut] == [p.reply_lengths for p in whole]
    for p, pair in zip(whole, pairs, strict=True):
        n = len(tokenizer(render_response(pair.chosen, "chat", tokenizer), add_special_tokens=False)["input_ids"])
        assert p.reply_lengths[0] == n == len(p.chosen_ids)
    assert all(len(p.chosen) == 48 or p.length <= 48 for p in cut)
