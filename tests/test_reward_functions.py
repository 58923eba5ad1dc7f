import math

import pytest
import torch

from rlhf_lab.errors import UserError
from rlhf_lab.rewards.functions import (
    RewardFunctionError,
    call_reward_functions,
    load_reward_function,
    load_reward_functions,
    weighted_reward,
)

FILE = '''
def brevity(prompts, completions, **kwargs):
    return [-len(c[0]["content"]) for c in completions]

def picky(prompts, completions, completion_ids, **kwargs):
    return [None if len(ids) > 2 else 1.0 for ids in completion_ids]

def broken(prompts, completions, **kwargs):
    raise RuntimeError("boom")

def short(prompts, completions, **kwargs):
    return [1.0]

def words(prompts, completions, **kwargs):
    return ["a"] * len(completions)

NOT_CALLABLE = 3
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(FILE)
    return path


def test_load_from_file_and_module(reward_file):
    f = load_reward_function(f"{reward_file}:brevity")
    assert f.name == "brevity"
    assert f.fn(prompts=[[]], completions=[[{"role": "assistant", "content": "abc"}]]) == [-3]
    g = load_reward_function("math:fabs")  # an importable module
    assert g.fn(-2.0) == 2.0


@pytest.mark.parametrize("spec,needle", [
    ("no_colon", "not of the form module:function"),
    ("mod:", "not of the form module:function"),
    ("not_a_module_xyz:f", "cannot import module"),
    ("math:no_such_fn", "'math' has no 'no_such_fn'"),
    ("missing/dir/file.py:f", "no such file missing/dir/file.py"),
])
def test_bad_specs_are_one_line_user_errors(spec, needle):
    with pytest.raises(UserError, match=needle) as e:
        load_reward_function(spec)
    assert "\n" not in str(e.value) and "--reward_funcs" in str(e.value)


def test_not_callable_and_import_error_in_file(reward_file, tmp_path):
    with pytest.raises(UserError, match="not callable"):
        load_reward_function(f"{reward_file}:NOT_CALLABLE")
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_xyz\n")
    with pytest.raises(UserError, match=r"importing .*bad\.py failed: ModuleNotFoundError"):
        load_reward_function(f"{bad}:f")


def test_weights_must_match_the_functions(reward_file):
    with pytest.raises(UserError, match=r"--reward_weights: 1 weight.*2 reward function"):
        load_reward_functions([f"{reward_file}:brevity", f"{reward_file}:picky"], [1.0])
    funcs, weights = load_reward_functions([f"{reward_file}:brevity", f"{reward_file}:picky"])
    assert weights == [1.0, 1.0] and len(funcs) == 2


def test_call_and_weighted_sum_with_none(reward_file):
    funcs, _ = load_reward_functions([f"{reward_file}:brevity", f"{reward_file}:picky"])
    prompts = [[{"role": "user", "content": "hi"}]] * 3
    per = call_reward_functions(funcs, prompts, ["ab", "abcd", "x"], [[1, 2], [1, 2, 3], [5]])
    assert per[:, 0].tolist() == [-2.0, -4.0, -1.0]
    assert per[0, 1] == 1.0 and math.isnan(per[1, 1]) and per[2, 1] == 1.0
    r = weighted_reward(per, [0.5, 2.0])
    assert r.tolist() == [-1.0 + 2.0, -2.0, -0.5 + 2.0]
    # a completion no function scored: NaN (no reward), not 0
    r2 = weighted_reward(torch.tensor([[float("nan"), float("nan")], [1.0, float("nan")]]), [1.0, 1.0])
    assert math.isnan(r2[0]) and r2[1] == 1.0


@pytest.mark.parametrize("name,needle", [
    ("broken", "broken raised RuntimeError: boom"),
    ("short", "short returned 1 values for 2 completions"),
    ("words", "words returned 'a' for completion 0"),
])
def test_failing_functions_are_named(reward_file, name, needle):
    funcs, _ = load_reward_functions([f"{reward_file}:{name}"])
    with pytest.raises(RewardFunctionError, match=needle):
        call_reward_functions(funcs, [[], []], ["a", "b"], [[1], [2]])
