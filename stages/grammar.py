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


def best_tokens(scores) -> list[int]:
    """Each row's highest-scoring token (the first of equals): numpy's argmax on CPU, which takes
    ~13 us for 8 rows of 32k scores where torch's takes ~340 us."""
    if scores.device.type == "cpu" and str(scores.dtype) != "torch.bfloat16":  # numpy has no bfloat16
        return scores.numpy().argmax(-1).tolist()
    return scores.argmax(-1).tolist()


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
    """Masks each constrained row's scores to the tokens its grammar allows next. A row's matcher
    first takes the token the row drew at the last step (drawn under this mask, so always
    allowed); rows that are finished (`FinishedRows`) or unconstrained keep every token. A greedy
    row whose best token the grammar allows keeps its scores unmasked: its argmax is that token
    either way, and one token's check costs a fraction of a whole mask (most steps of a model
    that has learnt the format)."""

    def __init__(self, matchers: list, finished, vocab_rows: int, greedy: list[bool]):
        self.matchers, self.finished, self.greedy = matchers, finished, greedy
        self.masked = self.unmasked = 0  # row steps with a mask computed, and greedy ones left unmasked
        self.bitmask = np.zeros((len(matchers), (vocab_rows + 31) // 32), dtype=np.int32)  # bit t of row r: token t allowed
        self.row_memory = [(self.bitmask[row].ctypes.data, self.bitmask[row].nbytes) for row in range(len(matchers))]  # where each row's mask goes

    def __call__(self, input_ids, scores):
        import torch

        drawn = input_ids.shape[1] > self.finished.prompt_len  # each row's last token was drawn under this mask
        last = input_ids[:, -1].tolist()
        best = best_tokens(scores) if any(self.greedy) else None
        masked = []
        for row, (matcher, done) in enumerate(zip(self.matchers, self.finished(input_ids))):
            if matcher is None or done:
                continue
            if drawn and not matcher.consume_token(last[row]):
                raise RuntimeError(f"row {row}: the grammar refused the token its own mask allowed: {matcher.get_error()}")
            if self.greedy[row] and matcher.validate_tokens([best[row]]) == 1:
                self.unmasked += 1
                continue
            matcher.unsafe_compute_mask_ptr(*self.row_memory[row])
            self.masked += 1
            masked.append(row)
        if masked:  # bit t of a row clear: token t is not allowed there
            refused = np.unpackbits(np.invert(self.bitmask[masked].view(np.uint8)), axis=1, count=scores.shape[-1], bitorder="little")
            refused = torch.from_numpy(refused).to(scores.device)
            if len(masked) == len(scores):
                scores.add_(refused, alpha=REFUSED)
            else:  # row by row in place: ~4x faster than an indexed add, which copies the rows out and back
                for k, row in enumerate(masked):
                    scores[row].add_(refused[k], alpha=REFUSED)
        return scores
