"""RL prompt records: the three record forms, the bad-line rules (raise with path:line, or
skip and count), prompt tokenisation through the chat template, and the arithmetic demo task."""

import json

import pytest

from illada_jax import rewards
from illada_jax.data.chat import rl, sft
from illada_jax.data.tokenizers.tokenizer import Tokenizer


def _write_lines(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = [
    {"prompt": "What is 3 + 4?", "answer": "7", "id": "a1"},
    {
        "messages": [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 2 + 3?"},
        ],
        "answer": "5",
    },
    {"question": "Natalia sold 48 clips ...", "answer": "She sold 24 in May.\n#### 72"},
    {"prompt": "What is 6 * 7?", "system": "Be brief.", "answer": 42},
]


def test_the_three_record_forms(tmp_path):
    path = _write_lines(tmp_path / "rl.jsonl", [GOOD[0], "", GOOD[1], GOOD[2], GOOD[3]])
    examples, skipped = rl.read_rl_jsonl(path)
    assert skipped == []
    assert len(examples) == 4
    first, dialogue, gsm8k, numeric = examples
    assert first.messages == [{"role": "user", "content": "What is 3 + 4?"}]
    assert first.answer == "7"
    assert first.fields == GOOD[0]  # every field kept for the reward
    assert dialogue.messages == GOOD[1]["messages"]
    assert gsm8k.messages == [{"role": "user", "content": "Natalia sold 48 clips ..."}]
    assert gsm8k.fields["question"] == GOOD[2]["question"]
    assert numeric.messages[0] == {"role": "system", "content": "Be brief."}
    assert numeric.answer == "42" and numeric.fields["answer"] == "42"
    # The record reaches a reward as `example`.
    assert rewards.final_number("", "#### 72", gsm8k.fields) == 1.0


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"prompt": "What is 1 + 1?"}, "each RL record needs an 'answer' (the reference"),
        ({"question": "q", "answer": ""}, "'answer' is empty"),
        ({"question": "q", "answer": ["2"]}, "'answer' is a list"),
        ({"answer": "2"}, "exactly one of 'messages', 'prompt' or 'question' (found none)"),
        ({"prompt": "q", "question": "q", "answer": "2"}, "found 'prompt', 'question'"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ],
                "answer": "2",
            },
            "must end with a user turn",
        ),
        ({"messages": [{"role": "robot", "content": "q"}], "answer": "2"}, "role 'robot'"),
        ({"messages": [], "answer": "2"}, "non-empty list"),
        ({"prompt": "   ", "answer": "2"}, "empty or non-string content"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_records_raise_with_path_and_line(tmp_path, record, problem):
    path = _write_lines(tmp_path / "rl.jsonl", [GOOD[0], record])
    with pytest.raises(rl.RlFormatError) as info:
        rl.read_rl_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert problem in str(info.value)
    assert isinstance(info.value, sft.SftFormatError)


def test_skip_mode_counts_bad_lines(tmp_path):
    lines = [
        GOOD[0],
        {"prompt": "no answer"},
        "{not json",
        GOOD[2],
        {"messages": [{"role": "assistant", "content": "hi"}], "answer": "1"},
        "",
        GOOD[3],
    ]
    path = _write_lines(tmp_path / "rl.jsonl", lines)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "answer": "1"}\n')
    examples, skipped = rl.read_rl_jsonl(path, on_error="skip")
    assert [e.answer for e in examples] == ["7", GOOD[2]["answer"], "42"]
    assert [line for line, _ in skipped] == [2, 3, 5]
    assert "needs an 'answer'" in skipped[0][1]
    assert "invalid JSON" in skipped[1][1]
    assert "'user' was expected" in skipped[2][1]
    _, skipped = rl.read_rl_jsonl(tmp_path / "latin1.jsonl", on_error="skip")
    assert len(skipped) == 1 and "not UTF-8" in skipped[0][1]
    with pytest.raises(ValueError, match="on_error"):
        rl.read_rl_jsonl(path, on_error="ignore")


def test_tokenize_rl_examples_uses_the_chat_prompt():
    tok = Tokenizer.default()
    formatter = sft.ChatFormatter(tok)
    examples = [rl.parse_rl_record(GOOD[0]), rl.parse_rl_record(GOOD[1])]
    ids = rl.tokenize_rl_examples(examples, formatter)
    assert ids == [formatter.prompt(e.messages) for e in examples]
    text = tok.decode(ids[0])
    assert text.startswith("<s><|start_header_id|>user<|end_header_id|>\n\nWhat is 3 + 4?")
    assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_arithmetic_task_is_deterministic_and_correct(tmp_path):
    records = rl.arithmetic_task(50, seed=3, max_operand=9, operations=("+", "-", "*"))
    assert records == rl.arithmetic_task(50, seed=3, max_operand=9, operations=("+", "-", "*"))
    assert records != rl.arithmetic_task(50, seed=4, max_operand=9, operations=("+", "-", "*"))
    seen_ops = set()
    for record in records:
        words = record["prompt"].removeprefix("What is ").removesuffix("?").split()
        a, op, b = int(words[0]), words[1], int(words[2])
        seen_ops.add(op)
        assert 0 <= a <= 9 and 0 <= b <= 9
        assert int(record["answer"]) == {"+": a + b, "-": a - b, "*": a * b}[op] >= 0
    assert seen_ops == {"+", "-", "*"}
    assert rl.write_jsonl(records, tmp_path / "task.jsonl") == 50
    examples, _ = rl.read_rl_jsonl(tmp_path / "task.jsonl")
    assert [e.fields for e in examples] == records
    assert all(rewards.exact_match("", e.answer, e.fields) == 1.0 for e in examples)
    with pytest.raises(ValueError, match="choose from"):
        rl.arithmetic_task(1, operations=("/",))
