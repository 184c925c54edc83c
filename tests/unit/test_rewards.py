"""Rewards as code: the built-ins on GSM8K-style strings, specs (names, regex:, sums with
weights, user functions from a file or a module), the registry, and `score`'s refusal of
rewards that raise or return non-finite values. Expected values are worked out by hand."""

import math
import sys
import textwrap

import numpy as np
import pytest

from illada_jax import rewards
from illada_jax.errors import IlladaError
from illada_jax.rewards import RewardError

GSM8K_ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,234"


def _final(completion, answer):
    return rewards.final_number("", completion, {"answer": answer})


# ---------------------------------------------------------------- final_number


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("She sold 1234 clips.", GSM8K_ANSWER, 1.0),  # reference after ####, thousands comma
        ("So 1,234 clips in all.", GSM8K_ANSWER, 1.0),
        ("So 1,235 clips in all.", GSM8K_ANSWER, 0.0),
        ("12 + 30 = 42, but the answer is \\boxed{41}. Check: 42", "42", 0.0),  # box wins
        ("First \\boxed{7}, then \\boxed{42}. Later 7.", "42", 1.0),  # the last box
        ("\\boxed{\\frac{84}{2} = 42}", "42", 1.0),  # nested braces; last number inside
        ("It costs $5.00.", "5", 1.0),  # $, decimals equal ints, trailing period
        ("It costs 5.", "$5.00", 1.0),
        ("It costs 5.5 dollars", "5", 0.0),
        ("3.0", "3", 1.0),
        ("The change is -7 degrees.", "#### -7", 1.0),  # negative numbers
        ("The change is 7 degrees.", "#### -7", 0.0),
        ("From 3-4 it is 4", "4", 1.0),  # a dash between numbers is not a minus sign
        ("#### 18 eggs, 3 left", "18", 1.0),  # the first number after the last ####
        ("I guess 9 #### 18\nthat is 3 days", "18", 1.0),
        ("I do not know.", "42", 0.0),  # no number
        ("\\boxed{x}", "42", 0.0),  # a box without a number; no fallback to other numbers
        ("", "0", 0.0),
    ],
)
def test_final_number(completion, answer, expected):
    assert _final(completion, answer) == expected


def test_final_number_parsing_helpers():
    assert rewards.parse_number(" $1,234.50. ") == rewards.parse_number("1234.5")
    assert rewards.parse_number("twelve") is None
    assert rewards.parse_number("1.2.3") is None
    assert rewards.last_boxed("a \\boxed{1} b \\boxed{{2}+3}") == "{2}+3"
    assert rewards.last_boxed("no box") is None
    assert rewards.reference_number(GSM8K_ANSWER) == 1234


def test_final_number_refuses_a_non_numeric_reference():
    with pytest.raises(RewardError, match=r"'Paris' is not a number.*exact_match"):
        _final("Paris", "Paris")


# ---------------------------------------------------------------- exact_match, regex


def test_exact_match():
    assert rewards.exact_match("q", "  Paris\n", {"answer": "Paris "}) == 1.0
    assert rewards.exact_match("q", "paris", {"answer": "Paris"}) == 0.0
    assert rewards.exact_match("q", "Paris, France", {"answer": "Paris"}) == 0.0
    with pytest.raises(RewardError, match="'answer'"):
        rewards.exact_match("q", "Paris", {})


def test_format_regex_default_and_per_example_pattern():
    fmt = rewards.get("format_regex")
    good = "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>"
    assert fmt("q", good, {"answer": "7"}) == 1.0  # DOTALL: the reasoning spans lines
    assert fmt("q", "<answer>7</answer>", {"answer": "7"}) == 0.0
    assert fmt("q", "ANSWER: 7", {"answer": "7", "format_pattern": r"ANSWER: \d+"}) == 1.0
    assert fmt("q", good, {"answer": "7", "format_pattern": r"ANSWER: \d+"}) == 0.0


def test_regex_spec():
    digits = rewards.get(r"regex:^\d+$")
    assert digits("q", "42", {}) == 1.0
    assert digits("q", "42 apples", {}) == 0.0
    assert digits("q", "", {}) == 0.0
    with pytest.raises(RewardError, match="not a valid regular expression"):
        rewards.get("regex:(unclosed")


# ---------------------------------------------------------------- specs and sums


def test_single_name_resolves_to_the_registered_function():
    assert rewards.get("final_number") is rewards.final_number
    assert rewards.get(" exact_match ") is rewards.exact_match
    assert rewards.get(rewards.exact_match) is rewards.exact_match
    assert {"exact_match", "final_number", "format_regex"} <= set(rewards.names())


def test_weighted_sum_spec_against_hand_computed_values():
    spec = "final_number + 0.5*exact_match + -0.25 * regex:^\\d+ (apples|pears)$"
    reward = rewards.get(spec)
    example = {"answer": "#### 12"}
    # final 1, exact 0 (the answer is '#### 12'), regex 1: 1 + 0 - 0.25
    assert reward("q", "12 apples", example) == pytest.approx(0.75)
    # final 0, exact 0, regex 0
    assert reward("q", "13 plums", example) == 0.0
    # final 1, exact 1, regex 0: 1 + 0.5
    assert reward("q", "#### 12", example) == pytest.approx(1.5)
    # the regex term holds + and * and runs to the end of the spec
    assert [name for name, _, _ in reward.terms] == [
        "final_number",
        "exact_match",
        "regex:^\\d+ (apples|pears)$",
    ]
    assert [weight for _, _, weight in reward.terms] == [1.0, 0.5, -0.25]
    assert rewards.get("2*exact_match")("q", "a", {"answer": "a"}) == 2.0
    assert rewards.get("exact_match+exact_match")("q", "a", {"answer": "a"}) == 2.0


def test_weighted_sum_helper():
    reward = rewards.weighted_sum({"final_number": 2.0, rewards.exact_match: 0.5})
    assert reward("q", "7", {"answer": "7"}) == 2.5
    assert reward("q", "7.0", {"answer": "7"}) == 2.0
    assert reward.__name__ == "2*final_number+0.5*exact_match"
    with pytest.raises(RewardError, match="give a number"):
        rewards.weighted_sum({"final_number": "2"})
    with pytest.raises(RewardError, match="at least one"):
        rewards.weighted_sum({})


def test_unknown_name_lists_the_registered_ones_and_the_reference_forms():
    with pytest.raises(RewardError) as info:
        rewards.get("final_numbr+exact_match")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown reward 'final_numbr'" in message
    assert "exact_match, final_number, format_regex" in message
    assert "path/to/file.py:function" in message and "module.path:function" in message
    assert isinstance(info.value, IlladaError)
    for bad in ("", "exact_match++final_number", "exact_match+"):
        with pytest.raises(RewardError, match="empty"):
            rewards.get(bad)


def test_user_function_from_a_file(tmp_path, monkeypatch):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            def shorter_is_better(prompt, completion, example):
                return 1.0 / (1 + len(completion))

            NOT_A_FUNCTION = 3
            """
        )
    )
    reward = rewards.get(f"{path}:shorter_is_better")
    assert reward("q", "abc", {}) == 0.25
    monkeypatch.chdir(tmp_path)  # a relative path is relative to the current directory
    mixed = rewards.get("0.5*my_rewards.py:shorter_is_better+final_number")
    assert mixed("q", "1", {"answer": "1"}) == pytest.approx(0.5 * 0.5 + 1.0)
    with pytest.raises(RewardError, match="no 'missing'.*shorter_is_better"):
        rewards.get("my_rewards.py:missing")
    with pytest.raises(RewardError, match="not a function"):
        rewards.get("my_rewards.py:NOT_A_FUNCTION")
    with pytest.raises(RewardError, match="does not exist"):
        rewards.get("nowhere.py:shorter_is_better")
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardError, match="does not import.*ModuleNotFoundError"):
        rewards.get("broken.py:anything")


def test_user_function_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "reward_pkg_for_test.py").write_text(
        "def always_half(prompt, completion, example):\n    return 0.5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert rewards.get("reward_pkg_for_test:always_half")("q", "c", {}) == 0.5
        with pytest.raises(RewardError, match="does not import"):
            rewards.get("no_such_module_for_rewards:fn")
    finally:
        sys.modules.pop("reward_pkg_for_test", None)


def test_register():
    @rewards.register("test_constant_one")
    def constant_one(prompt, completion, example):
        return 1

    try:
        assert rewards.get("test_constant_one") is constant_one
        rewards.register("test_constant_one")(constant_one)  # the same function again: fine

        def other(prompt, completion, example):
            return 0.0

        with pytest.raises(RewardError, match="already registered"):
            rewards.register("test_constant_one")(other)
        with pytest.raises(RewardError, match="not valid"):
            rewards.register("a+b")
    finally:
        rewards._REGISTRY.pop("test_constant_one", None)


# ---------------------------------------------------------------- score


def test_score_returns_float32_per_completion():
    completions = ["#### 7", "\\boxed{8}", "no idea"]
    examples = [{"answer": "7"}, {"answer": "#### 8"}, {"answer": "9"}]
    out = rewards.score(rewards.final_number, "final_number", ["q"] * 3, completions, examples)
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_array_equal(out, [1.0, 1.0, 0.0])
    with pytest.raises(RewardError, match="one prompt and one example per completion"):
        rewards.score(rewards.final_number, "final_number", ["q"], completions, examples)


def _raises_on_second(prompt, completion, example):
    if completion == "boom":
        raise ZeroDivisionError("division by zero")
    return 1.0


@pytest.mark.parametrize(
    ("fn", "problem"),
    [
        (_raises_on_second, "raised ZeroDivisionError: division by zero"),
        (lambda p, c, e: math.nan if c == "boom" else 0.0, "returned nan"),
        (lambda p, c, e: math.inf if c == "boom" else 0.0, "returned inf"),
        (lambda p, c, e: "1.0" if c == "boom" else 0.0, "returned '1.0' (str)"),
        (lambda p, c, e: None if c == "boom" else 0.0, "returned None"),
    ],
)
def test_score_refuses_a_reward_that_raises_or_is_not_finite(fn, problem):
    with pytest.raises(RewardError) as info:
        rewards.score(fn, "my_reward", ["q", "q"], ["ok", "boom"], [{}, {}])
    message = str(info.value)
    assert message.startswith("reward 'my_reward' on example 1: ")
    assert problem in message
    assert "make my_reward return a finite float for every completion" in message
    assert "\n" not in message


def test_score_names_the_failing_term_of_a_sum(tmp_path):
    reward = rewards.weighted_sum({"final_number": 1.0, (lambda p, c, e: math.nan): 1.0})
    with pytest.raises(RewardError, match=r"on example 0: reward '<lambda>' returned nan"):
        rewards.score(reward, "sum", ["q"], ["1"], [{"answer": "1"}])
    # A built-in's own error (a bad reference) keeps its message and fix.
    with pytest.raises(RewardError, match=r"'final_number' on example 0: .*'abc' is not a num"):
        rewards.score(rewards.final_number, "final_number", ["q"], ["1"], [{"answer": "abc"}])
