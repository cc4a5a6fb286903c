"""The answer grammar in the transformers backend, enforced by llguidance at any vocabulary size.

llguidance (a grammar engine vLLM, SGLang and llama.cpp use) takes the same regular expression vLLM
and servers get (`stages.answer.answer_regex`) and gives each row of a batch a bitmask of the
tokens allowed next, step by step: at a 32k vocabulary in about a seventh of the CPU time
xgrammar needs (docs/decisions.md). A model whose grammar it cannot build is refused when the
captioner starts (`GrammarError`), never captioned in free text instead; `vidcurate doctor` runs
the same check.
"""

from __future__ import annotations

import numpy as np

from vidcurate.stages.answer import TEXT_CHARS

# llguidance's "slices": token sets it works out once per tokenizer, then allows wholesale where
# the grammar takes any run of their length. Here: runs of the answer's text characters, the
# bounded ones for a text's last characters before its length limit.
TEXT_SLICES = [f"{TEXT_CHARS}{{1,{n}}}" for n in (3, 8, 16, 30)] + [f"{TEXT_CHARS}+"]
# Added to a refused token's score: softmax gives it exactly 0, as for -inf (which cannot be
# scaled by a 0/1 mask: 0 x -inf is NaN); one vectorised add is twice as fast as masked_fill_.
REFUSED = -3e38
FEW_WORDS = 2  # a mask with at most this many bitmask words set is read bit by bit


def numpy_view(scores):
    """The scores as a numpy array sharing their memory, or None (on a GPU; numpy has no bfloat16):
    numpy's row operations on CPU cost a fraction of torch's (argmax of 8 rows of 32k scores:
    ~13 us against ~340 us)."""
    if scores.device.type == "cpu" and str(scores.dtype) != "torch.bfloat16":
        return scores.numpy()
    return None


def best_tokens(scores) -> list[int]:
    """Each row's highest-scoring token (the first of equals)."""
    values = numpy_view(scores)
    return (scores if values is None else values).argmax(-1).tolist()


def set_bits(word: int) -> list[int]:
    """The positions of a 32-bit bitmask word's set bits, lowest first (a negative int32 included)."""
    word &= 0xFFFFFFFF
    bits = []
    while word:
        low = word & -word
        bits.append(low.bit_length() - 1)
        word ^= low
    return bits


class GrammarError(ValueError):
    """llguidance cannot build the answer grammar for this model: `problem` says why, `fix` what to do."""

    fix = "set caption.structured: off to caption this model in free text, checked by parsing and retries only"

    def __init__(self, problem: str):
        super().__init__(f"{problem} ({self.fix})")
        self.problem = problem


class AnswerGrammar:
    """llguidance set up for one model: its vocabulary as the model's output layer spans it (Qwen's
    has more rows than the tokenizer has tokens) and its stop tokens, which end an answer once
    the grammar is complete."""

    def __init__(self, model: str, tokenizer, vocab_rows: int, stop_ids: list[int]):
        import llguidance.hf

        self.model, self.vocab_rows, self.stop_ids = model, vocab_rows, stop_ids
        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_rows, eos_token=stop_ids, slices=TEXT_SLICES)
        except Exception as exc:  # noqa: BLE001 - any failure to read the tokenizer is the finding
            raise GrammarError(f"llguidance cannot read {model}'s tokenizer ({type(tokenizer).__name__}): {exc}") from exc

    @classmethod
    def for_model(cls, model: str, tokenizer, config, generation_config=None) -> AnswerGrammar:
        """From a checkpoint's tokenizer, config and generation config (stop tokens: the generation
        config's, else the tokenizer's end-of-sequence token)."""
        stops = getattr(generation_config, "eos_token_id", None)
        stops = tokenizer.eos_token_id if stops is None else stops
        if stops is None:
            raise GrammarError(f"{model} names no end-of-sequence token, so no answer could end")
        return cls(model, tokenizer, config.get_text_config().vocab_size, [stops] if isinstance(stops, int) else list(stops))

    @classmethod
    def from_checkpoint(cls, model: str) -> AnswerGrammar:
        """From a local folder or the Hugging Face cache, without loading weights or downloading."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        try:
            generation = GenerationConfig.from_pretrained(model, local_files_only=True)
        except OSError:  # no generation_config.json: the tokenizer's end token ends answers
            generation = None
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        return cls.for_model(model, tokenizer, AutoConfig.from_pretrained(model, local_files_only=True), generation)

    def matcher(self, regex: str):
        """A fresh matcher of one answer under `regex`."""
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, llguidance.LLMatcher.grammar_from_regex(regex), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"llguidance cannot build the answer grammar for {self.model}: {matcher.get_error()}")
        return matcher

    def mask(self, regexes: list[str | None], finished, greedy: list[bool] | None = None) -> GrammarMask:
        """The logits processor for one batch; a row whose regex is None is not constrained;
        `greedy` rows take their argmax (the caption stage's temperature 0)."""
        greedy = greedy or [False] * len(regexes)
        return GrammarMask([None if regex is None else self.matcher(regex) for regex in regexes], finished, self.vocab_rows, greedy)


class GrammarMask:
    """Holds each constrained row to the tokens its grammar allows next; rows that are finished
    (`FinishedRows`) or unconstrained keep every token.

    A greedy row needs only its best allowed token on top. When the grammar allows the row's best
    token, the scores stay as they are (one token's check costs a fraction of a whole mask; most
    steps of a model that has learnt the format). When it refuses it (on CPU), the best of the
    tokens the mask allows is raised to +inf, instead of refusing every other token of the row.
    Either way the row's matcher takes that token at once, and the sampler takes it from `led`
    without an argmax of its own. A sampled row (or a greedy one on a GPU) has its refused tokens'
    scores pushed to REFUSED, and its matcher takes the token it drew at the next step."""

    def __init__(self, matchers: list, finished, vocab_rows: int, greedy: list[bool]):
        self.matchers, self.finished, self.greedy = matchers, finished, greedy
        self.any_greedy = any(greedy)
        self.masked = self.unmasked = 0  # row steps with a mask computed, and greedy ones whose best token was allowed
        self.bitmask = np.zeros((len(matchers), (vocab_rows + 31) // 32), dtype=np.int32)  # bit t of row r: token t allowed
        self.row_memory = [(self.bitmask[row].ctypes.data, self.bitmask[row].nbytes) for row in range(len(matchers))]  # where each row's mask goes
        # the token a greedy row's matcher took at this step, ahead of the sampler, which takes it as is
        self.led: list[int | None] = [None] * len(matchers)

    def __call__(self, input_ids, scores):
        done = self.finished(input_ids)
        drawn = self.finished.drawn  # each row's token drawn at the last step, under this mask
        values = numpy_view(scores)
        best = best_tokens(scores) if self.any_greedy else None
        refused = []
        for row, matcher in enumerate(self.matchers):
            if matcher is None or done[row]:
                continue
            if drawn:
                self._take_drawn(row, matcher, drawn[row])
            if self.greedy[row] and matcher.try_consume_tokens([best[row]]) == 1:
                self.led[row] = best[row]
                self.unmasked += 1
                continue
            matcher.unsafe_compute_mask_ptr(*self.row_memory[row])
            self.masked += 1
            if self.greedy[row] and values is not None:
                token = self._best_allowed(row, values[row])
                values[row, token] = np.inf
                matcher.consume_token(token)
                self.led[row] = token
            else:
                refused.append(row)
        if refused:
            self._refuse(scores, values, refused)
        return scores

    def _take_drawn(self, row: int, matcher, token: int) -> None:
        """The matcher takes the token the row drew, unless it took it ahead (then they must agree)."""
        led, self.led[row] = self.led[row], None
        if led is not None:
            if led != token:
                raise RuntimeError(f"row {row}: the sampler drew token {token} where the grammar led with {led}")
        elif not matcher.consume_token(token):
            raise RuntimeError(f"row {row}: the grammar refused the token its own mask allowed: {matcher.get_error()}")

    def _best_allowed(self, row: int, row_scores) -> int:
        """The highest-scoring token the row's mask allows (the first of equals). Most masks that
        refuse a best token allow a few tokens (JSON keys, time choices) in one or two bitmask
        words: their set bits are read one by one, ~3x faster than unpacking the whole mask."""
        mask = self.bitmask[row]
        words = mask.nonzero()[0].tolist()
        if len(words) <= FEW_WORDS:
            return max((word * 32 + bit for word in words for bit in set_bits(int(mask[word]))), key=row_scores.__getitem__)
        allowed = np.unpackbits(mask.view(np.uint8), count=len(row_scores), bitorder="little").view(bool)
        return int(np.argmax(np.where(allowed, row_scores, -np.inf)))

    def _refuse(self, scores, values, rows: list[int]) -> None:
        """Adds REFUSED to the scores of the tokens the rows' masks refuse (their bits clear): in
        numpy where it can read the scores (row by row ~3x faster than torch's indexed rows), else
        in torch on the scores' device."""
        refused = np.unpackbits(np.invert(self.bitmask[rows].view(np.uint8)), axis=1, count=scores.shape[-1], bitorder="little")
        if values is not None:
            with np.errstate(over="ignore"):  # a score near float32's lowest (a model's own mask) goes to -inf
                for k, row in enumerate(rows):
                    values[row] += refused[k] * np.float32(REFUSED)
            return
        import torch

        refused = torch.from_numpy(refused).to(scores.device)
        if len(rows) == len(scores):
            scores.add_(refused, alpha=REFUSED)
        else:  # row by row in place: ~4x faster than an indexed add, which copies the rows out and back
            for k, row in enumerate(rows):
                scores[row].add_(refused[k], alpha=REFUSED)
