"""data.collate's preference pairs: one TokenizedPair for DPO (keep the reply starts) and reward models (keep the
reply ends), checked by hand on small id lists."""

from rlhf_lab.data.collate import TokenizedPair, fit_pair


def _pair():
    return TokenizedPair([1, 2, 3], [10, 11, 12, 13], [20, 21], uid=7)


def test_a_pair_that_fits_is_kept_whole_either_way():
    pair = _pair()
    assert pair.chosen == [1, 2, 3, 10, 11, 12, 13] and pair.rejected == [1, 2, 3, 20, 21] and pair.length == 7
    for keep in ("start", "end"):
        assert fit_pair(pair, 7, "drop", keep) == pair


def test_keep_start_cuts_both_replies_to_the_room_the_prompt_leaves():
    cut = fit_pair(_pair(), 5, "truncate", "start")  # room 5 - 3 = 2 tokens per reply
    assert (cut.prompt_ids, cut.chosen_ids, cut.rejected_ids, cut.uid) == ([1, 2, 3], [10, 11], [20, 21], 7)
    assert fit_pair(_pair(), 6, "drop", "start") is None
    assert fit_pair(_pair(), 3, "truncate", "start") is None  # the prompt alone fills max_length: no room
    assert fit_pair(TokenizedPair([1], [], [5]), 8, "truncate", "start") is None  # an empty reply


def test_keep_end_keeps_the_last_tokens_of_each_sequence():
    cut = fit_pair(_pair(), 5, "truncate", "end")
    # prompt + chosen = 1 2 3 10 11 12 13 -> last 5; prompt + rejected = 1 2 3 20 21 fits as it is
    assert cut.prompt_ids == [] and cut.chosen == [3, 10, 11, 12, 13] and cut.rejected == [1, 2, 3, 20, 21]
    assert cut.uid == 7 and cut.length == 5
    assert fit_pair(_pair(), 6, "drop", "end") is None
