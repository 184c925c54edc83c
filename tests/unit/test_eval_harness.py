"""The lm-eval model `illada` and the shipped offline tasks (needs the `eval` extra).

A one-layer random `tiny` model with the default tokenizer: the harness must hand exactly the
ids of docs/algorithms.md#lm-evaluation-harness's `_encode_pair` to the scorers and return their
numbers unchanged; the EOS pad (docs/algorithms.md#confidence-scoring `padd_eos`) is checked against
logits computed directly on `[prompt, MASK, EOS]`.
"""

import json
import os
import pathlib
import tempfile

import numpy as np
import pytest

# Keep datasets' cache (written when the task jsonl is loaded) out of the user's home.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="illada-test-hf-"))
pytest.importorskip("lm_eval", reason='lm-eval is not installed: pip install "illada-jax[eval]"')

from flax import nnx  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from illada_jax.config.presets import MODEL_PRESETS  # noqa: E402
from illada_jax.config.schema import ModelConfig  # noqa: E402
from illada_jax.data.tokenizers.tokenizer import Tokenizer  # noqa: E402
from illada_jax.diffusion import likelihood  # noqa: E402
from illada_jax.eval import harness, run_tasks, tasks  # noqa: E402
from illada_jax.inference import Model  # noqa: E402
from illada_jax.model.transformer import Transformer  # noqa: E402

CONTEXT = "In the beginning God"


@pytest.fixture(scope="module")
def model():
    # A one-layer model with the default 8192-piece tokenizer (the tests below pick texts by how
    # that tokenizer splits them).
    cfg = ModelConfig(**{**MODEL_PRESETS["small"], "n_layers": 1, "d_model": 256, "n_heads": 4,
                         "n_kv_heads": 2, "mlp_dim": 768, "max_seq_len": 512})  # fmt: skip
    return Model.from_module(Transformer(cfg, rngs=nnx.Rngs(0)), Tokenizer.default())


def _requests(kind, args_list):
    return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_encode_pair_moves_trailing_whitespace(model):
    tok = model.tokenizer
    lm = harness.IlladaLM(model=model)
    # "God " + "created": the space moves onto the continuation.
    context_ids, continuation_ids = lm._encode_pair(CONTEXT + " ", "created")
    assert context_ids == tok.encode(CONTEXT)
    assert tok.decode(continuation_ids) == " created"
    assert lm._encode_pair(CONTEXT, " created") == (context_ids, continuation_ids)
    # Several whitespace characters move together, and the continuation is the joint encoding's
    # suffix: "Answer:\n \n42" encodes as An|swer|:\n| |\n|4|2 while "Answer:" is An|swer|:, so
    # the newline merged into ":\n" is not part of the continuation
    # (docs/algorithms.md#lm-evaluation-harness, as lm-eval does).
    context_ids, continuation_ids = lm._encode_pair("Answer:\n \n", "42")
    assert tok.decode(context_ids) == "Answer:"
    assert tok.decode(continuation_ids) == " \n42"
    assert tok.decode(lm._encode_pair("Answer:  ", "42")[1]) == "  42"
    # BOS on request; an empty context conditions on BOS.
    bos_lm = harness.IlladaLM(model=model, add_bos_token="true")
    assert bos_lm._encode_pair(CONTEXT, " created")[0] == [tok.bos_id, *tok.encode(CONTEXT)]
    assert lm._encode_pair("", "In")[0] == [tok.bos_id]


def test_loglikelihood_matches_the_model_api(model):
    args = [(CONTEXT + " ", "created"), ("And", " God said"), (CONTEXT, " made the earth"),
            ("And ", "the earth")]  # fmt: skip
    lm = harness.IlladaLM(model=model, mc_num="4", batch_size="2", seed=7)
    pairs = [lm._encode_pair(*a) for a in args]
    got = lm.loglikelihood(_requests("loglikelihood", args))
    want = [model.log_likelihood(p, a, mc_num=4, batch_size=2, seed=7) for p, a in pairs]
    assert [score for score, _ in got] == want
    assert [greedy for _, greedy in got] == [False] * 4

    conf = harness.IlladaLM(model=model, loglikelihood_method="confidence", check_greedy=True)
    got = conf.loglikelihood(_requests("loglikelihood", args))
    # Continuations of one context are scored together, as score_confidence does.
    first = model.score_confidence(pairs[0][0], [pairs[0][1], pairs[2][1]])
    second = model.score_confidence(pairs[1][0], [pairs[1][1], pairs[3][1]])
    want = [first[0], second[0], first[1], second[1]]
    np.testing.assert_allclose([score for score, _ in got], want, rtol=1e-6)
    assert [greedy for _, greedy in got] == [model.is_greedy(p, a) for p, a in pairs]


def test_pad_eos_scores_with_a_visible_unscored_eos(model):
    prompt, answer = model.tokenizer.encode(CONTEXT), model.tokenizer.encode(" created")
    assert len(answer) == 1
    special = model.special_ids
    # Single-token answer: both scores are log p(answer | prompt, MASK, EOS) exactly.
    logits = model.logits(np.array([[*prompt, special.mask, special.eos]]))
    exact = _log_softmax(logits[0, len(prompt)])[answer[0]]
    kwargs = dict(model=model, pad_eos=True, mc_num=1, batch_size=1)
    elbo = harness.IlladaLM(**kwargs).loglikelihood(
        _requests("loglikelihood", [(CONTEXT, " created")])
    )
    conf = harness.IlladaLM(**kwargs, loglikelihood_method="confidence")
    conf_score = conf.loglikelihood(_requests("loglikelihood", [(CONTEXT, " created")]))
    np.testing.assert_allclose([elbo[0][0], conf_score[0][0]], [exact, exact], rtol=1e-4)
    assert not np.isclose(model.log_likelihood(prompt, answer, mc_num=1), exact, rtol=1e-4)
    # The suffix is really seen: scores with and without it differ for a multi-token answer.
    longer = model.tokenizer.encode(" made the heaven")
    with_eos = model.score_confidence(prompt, longer, suffix=[special.eos])
    assert not np.isclose(with_eos, model.score_confidence(prompt, longer), rtol=1e-4)


def test_loglikelihood_rolling_is_the_elbo_given_bos(model):
    lm = harness.IlladaLM(model=model, mc_num=2, batch_size=2)
    text = "In the beginning God created the heaven and the earth."
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    ids = model.tokenizer.encode(text)
    assert got == model.log_likelihood([model.tokenizer.bos_id], ids, mc_num=2, batch_size=2,
                                       seed=lm.seed)  # fmt: skip


def _free_reply(model, lm):
    """The harness's reply without stop strings, and where its tokens start in that text."""
    (free,) = lm.generate_until(_requests("generate_until", [(CONTEXT, {"until": []})]))
    prompt = model.tokenizer.encode(CONTEXT)
    steps = 16 if lm.variable_length else 32  # the harness's plan: steps per block / in all
    ids = model.generate([prompt], 32, steps=steps, block_length=16, seed=lm.seed,
                         variable_length=lm.variable_length, stop_strings=["</s>"])  # fmt: skip
    starts, text = [], ""
    for token in ids[0, len(prompt) :].tolist():
        if token == model.special_ids.eos:
            break
        starts.append(len(text))
        text += model.tokenizer.decode([token])
    assert text.startswith(free) and "</s>" not in free and len(starts) >= 4, (free, text)
    return free, starts


def _cut_replies(lm, stop):
    args = [(CONTEXT, {"until": [stop, "never-produced"]}), (CONTEXT, {"until": stop})]
    return lm.generate_until(_requests("generate_until", args))


@pytest.mark.parametrize("variable_length", [False, True])
def test_generate_until_cuts_at_the_first_stop_string(model, variable_length):
    lm = harness.IlladaLM(model=model, gen_length=32, block_length=16,
                          variable_length=variable_length)  # fmt: skip
    free, starts = _free_reply(model, lm)
    # A stop string that begins where a token begins (and nowhere earlier).
    stop = next(free[s : s + 2] for s in starts[1:] if free.find(free[s : s + 2]) == s)
    assert _cut_replies(lm, stop) == [free[: free.index(stop)]] * 2


@pytest.mark.parametrize("variable_length", [False, True])
def test_generate_until_cuts_inside_a_token(model, variable_length):
    lm = harness.IlladaLM(model=model, gen_length=32, block_length=16,
                          variable_length=variable_length)  # fmt: skip
    free, starts = _free_reply(model, lm)
    inside = [i for i in range(1, len(free)) if i not in starts and free.find(free[i]) == i]
    assert inside, "this reply has no stop candidate inside a token: the test checks nothing"
    stop = free[inside[0]]
    assert _cut_replies(lm, stop) == [free[: free.index(stop)]] * 2


def test_shipped_task_data_is_well_formed():
    root = tasks.task_dir()
    mc = [json.loads(line) for line in (root / "kjv_next_word.jsonl").read_text().splitlines()]
    gen = [json.loads(line) for line in (root / "kjv_verse_end.jsonl").read_text().splitlines()]
    assert len(mc) == len(gen) == 40
    for item in mc:
        assert len(set(item["choices"])) == 4 and 0 <= item["label"] < 4
    assert all(item["context"] and len(item["answer"].split()) == 3 for item in gen)


def test_run_tasks_offline_end_to_end(model, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # outside any git checkout, as a user's run directory often is
    out = tasks.materialize(tmp_path)
    config = (out / "kjv_next_word.yaml").read_text()
    assert str(tasks.task_dir() / "kjv_next_word.jsonl") in config
    # Built-in tasks are left out only to save their indexing time (~5-10 s here).
    results = run_tasks(model, [tasks.TAG], limit=3, include_defaults=False, mc_num=2,
                        batch_size=2, gen_length=16, evaluate_kwargs={"bootstrap_iters": 0})  # fmt: skip
    mc, gen = results["results"]["kjv_next_word"], results["results"]["kjv_verse_end"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    assert mc["sample_len"] == gen["sample_len"] == 3
    assert "not a git repository" not in capfd.readouterr().err  # lm-eval's git lookup is quiet


def test_bad_arguments_name_the_fix(model):
    with pytest.raises(harness.HarnessConfigError, match="batch_size=3 must divide"):
        harness.IlladaLM(model=model, mc_num=4, batch_size=3)
    with pytest.raises(harness.HarnessConfigError, match="checkpoint=PATH"):
        harness.IlladaLM()
    with pytest.raises(harness.HarnessConfigError, match="cache='bogus'"):
        harness.IlladaLM(model=model, cache="bogus")
    with pytest.raises(harness.HarnessConfigError, match="mc_num='many' is not a int"):
        harness.IlladaLM(model=model, mc_num="many")
    lm = harness.IlladaLM(model=model, max_length=16)
    with pytest.raises(likelihood.ScoringError, match="max_length=16"):
        lm.loglikelihood(_requests("loglikelihood", [(CONTEXT * 5, " created")]))


def test_a_standard_task_reads_a_local_copy_of_its_data(tmp_path):
    """lm-eval's own gsm8k, pointed at a local file: every split it names reads the file, and
    its prompt, stop strings and answer filters are gsm8k's."""
    import yaml
    from lm_eval.tasks import TaskManager

    data = tmp_path / "gsm8k_test.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in [(1, 2), (3, 4), (5, 6)]]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = TaskManager()
    spec = harness.local_task_file(manager, "gsm8k", str(data), str(tmp_path))
    written = yaml.safe_load(pathlib.Path(spec).read_text())
    assert written["dataset_kwargs"]["data_files"] == {"test": str(data), "train": str(data)}
    task = manager.load([spec])["tasks"]["gsm8k"]
    assert [d["question"] for d in task.test_docs()] == [r["question"] for r in rows]
    assert task.config.doc_to_text == "Question: {{question}}\nAnswer:"
    assert "Question:" in task.config.generation_kwargs["until"]
    with pytest.raises(harness.HarnessConfigError, match="expected an existing"):
        harness.local_task_file(manager, "gsm8k", str(tmp_path / "missing.jsonl"), str(tmp_path))
    with pytest.raises(harness.HarnessConfigError, match="which --tasks does not name"):
        run_tasks(lambda: None, ["kjv_next_word"], task_data={"gsm8k": str(data)},
                  include_defaults=False)  # fmt: skip
