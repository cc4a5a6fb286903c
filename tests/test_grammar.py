"""stages.grammar: llguidance allows exactly the tokens the answer regex allows, at the tiny
profile's byte vocabulary and at a trained 32k BPE, and a grammar it cannot build stops start-up."""

from __future__ import annotations

import random

import numpy as np
import pytest
import regex
from transformers import AutoTokenizer, ByT5Tokenizer

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.doctor import diagnose
from vidcurate.stages.answer import answer_regex
from vidcurate.stages.caption import CaptionConfig, make_captioner
from vidcurate.stages.captioners import FinishedRows, Prompt, RowSampler
from vidcurate.stages.grammar import AnswerGrammar, GrammarError, GrammarMask
from vidcurate.stages.models import CHAT_TEMPLATE, _build_vlm, _SPECIAL, bpe_qwen25vl, tiny_qwen2vl

TIMES, DURATION = [0.0, 1.25, 2.5], 5.0


@pytest.mark.parametrize("checkpoint", [tiny_qwen2vl, bpe_qwen25vl], ids=["bytes", "bpe32k"])
def test_masks_hold_exactly_the_tokens_the_regex_engine_allows(checkpoint):
    """Random walks through the answer grammar (texts of at most 20 characters, so the walks meet
    every text's length limit, where multi-character tokens straddle a field's end). Where the
    model has a choice, the mask is the set of tokens whose text keeps a match of the regex
    possible, plus the stop tokens once the answer is complete, and nothing in the output layer's
    padding. Where the grammar forces the next characters (the JSON keys), llguidance allows only
    their canonical tokenization (`caption`, not `c` + `aption`): a subset, never a token outside
    the grammar. A byte vocabulary has one tokenization, so there the mask is exact at every step:
    what the character automaton before llguidance allowed (tested against the same regex
    engine), so the tiny profile's answers are unchanged."""
    import llguidance.numpy

    model = str(checkpoint())
    grammar, tokenizer = AnswerGrammar.from_checkpoint(model), AutoTokenizer.from_pretrained(model)
    special, stops = set(tokenizer.all_special_ids), set(grammar.stop_ids)
    texts = {i: tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special}
    pattern = answer_regex(TIMES, DURATION, max_events=2, max_chars=20)
    compiled = regex.compile(pattern)
    bitmask, rng, choices, forced_steps = np.zeros((1, (grammar.vocab_rows + 31) // 32), dtype=np.int32), random.Random(0), 0, 0
    for _ in range(4):
        matcher, text = grammar.matcher(pattern), ""
        while not matcher.is_stopped():
            forced = matcher.compute_ff_bytes().decode()
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
            allowed = set(np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), count=grammar.vocab_rows, bitorder="little")).tolist())
            expected = {i for i, t in texts.items() if t and compiled.fullmatch(text + t, partial=True)}
            expected |= stops if compiled.fullmatch(text) else set()
            if forced and checkpoint is bpe_qwen25vl:
                assert allowed and allowed <= expected, text
                assert all(forced.startswith(texts[i]) or texts[i].startswith(forced) for i in allowed), text
                forced_steps += 1
            else:
                assert allowed == expected, text
                choices += 1
            token = rng.choice(sorted(allowed))
            assert matcher.consume_token(token)
            text += texts.get(token, "")
        assert compiled.fullmatch(text)
    assert choices > 40 and (forced_steps > 10 or checkpoint is tiny_qwen2vl)


def test_a_regex_the_engine_cannot_build_is_a_grammar_error():
    with pytest.raises(GrammarError, match="cannot build the answer grammar") as error:
        AnswerGrammar.from_checkpoint(str(tiny_qwen2vl())).matcher("(a|b")
    assert "caption.structured: off" in str(error.value)


@pytest.fixture(scope="module")
def byt5_model(tmp_path_factory):
    """A Qwen2-VL whose tokenizer is ByT5's (a pure-Python tokenizer, which llguidance cannot read),
    saved like any checkpoint: a model the engine cannot build a grammar for."""
    tokenizer = ByT5Tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL})
    tokenizer.eos_token = "<|im_end|>"
    path = tmp_path_factory.mktemp("byt5") / "byt5-qwen2-vl"
    _build_vlm("qwen2_vl", tokenizer, CHAT_TEMPLATE, len(tokenizer), ["<|im_end|>"], path)
    return path


def test_a_model_the_engine_cannot_read_stops_start_up_and_doctor_says_so(byt5_model, tmp_path):
    cfg = CaptionConfig(model=str(byt5_model))
    with pytest.raises(GrammarError, match="llguidance cannot read .*ByT5Tokenizer"):
        make_captioner(cfg)
    assert make_captioner(cfg.model_copy(update={"structured": "off"})).grammar is None  # free text only when asked

    base = load_config("pipelines/configs/sample.yaml", run_dir=str(tmp_path / "run"))
    findings = {f.check: f for f in diagnose(base.model_copy(update={"caption": cfg}))}
    assert not findings["caption grammar"].ok and "ByT5Tokenizer" in findings["caption grammar"].detail
    assert "caption.structured: off" in findings["caption grammar"].fix
    ready = {f.check: f for f in diagnose(base)}["caption grammar"]
    assert ready.ok and "llguidance builds the answer grammar" in ready.detail


def test_a_greedy_rows_best_allowed_token_is_the_argmax_of_its_masked_scores():
    """`GrammarMask._best_allowed`, the choice of a greedy row whose best token is refused (a mask's
    set bits read one by one where one or two bitmask words are set, the mask unpacked where more
    are), against numpy's argmax of the scores with every refused token at -inf: random masks of
    1 to 40 words, top bits (negative int32 words) included, and scores with ties (the first wins)."""
    rng = np.random.default_rng(0)
    words = 40
    mask = GrammarMask([None], None, vocab_rows=32 * words, greedy=[True])
    for bit in range(32):  # one token allowed, at every position of a word
        mask.bitmask[0] = 0
        mask.bitmask[0, 7] = np.uint32(1 << bit).view(np.int32)
        assert mask._best_allowed(0, rng.standard_normal(32 * words).astype(np.float32)) == 7 * 32 + bit
    for set_words in (1, 2, 3, words):
        for _ in range(100):
            mask.bitmask[0] = 0
            chosen = rng.choice(words, set_words, replace=False)
            mask.bitmask[0, chosen] = rng.integers(1, 2**32, set_words).astype(np.uint32).view(np.int32)
            scores = rng.integers(0, 6, 32 * words).astype(np.float32)  # few values: many ties
            allowed = np.unpackbits(mask.bitmask[0].view(np.uint8), bitorder="little").astype(bool)
            assert mask._best_allowed(0, scores) == int(np.argmax(np.where(allowed, scores, -np.inf)))


def test_greedy_rows_choose_alike_where_numpy_can_read_the_scores_and_where_it_cannot():
    """In float32 on CPU a greedy row whose best token is refused is led by its best allowed token
    (`GrammarMask.led`); from bfloat16 scores (numpy cannot view them, as on a GPU) it is masked
    and the sampler takes its argmax. Over the same random scores (bfloat16 values, exact in
    float32) the two choose the same tokens at every step, and every answer matches the regex."""
    import torch

    grammar = AnswerGrammar.from_checkpoint(str(bpe_qwen25vl()))
    tokenizer = AutoTokenizer.from_pretrained(str(bpe_qwen25vl()))
    pattern = answer_regex(TIMES, DURATION, max_events=2, max_chars=20)
    prompts = [Prompt([], pattern, 300, 0.0, row) for row in range(3)]
    chosen, masked = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        draws, ids = torch.Generator().manual_seed(0), torch.zeros(3, 4, dtype=torch.long)
        finished = FinishedRows(prompts, ids.shape[1], grammar.stop_ids)
        mask = grammar.mask([pattern] * 3, finished, [True] * 3)
        sampler = RowSampler(prompts, finished, mask.led)
        while not all(finished(ids)):
            scores = torch.randn(3, grammar.vocab_rows, generator=draws).to(torch.bfloat16).to(dtype)
            ids = torch.cat([ids, sampler(ids, mask(ids, scores)).argmax(-1)[:, None]], dim=1)
        chosen[dtype], masked[dtype] = ids, mask.masked
    assert torch.equal(chosen[torch.float32], chosen[torch.bfloat16])
    assert masked[torch.float32] == masked[torch.bfloat16] > 20  # the random scores' best tokens were often refused
    for row in chosen[torch.float32]:
        assert regex.fullmatch(pattern, tokenizer.decode(row[4:], skip_special_tokens=True))
