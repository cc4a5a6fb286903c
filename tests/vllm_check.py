"""Run by tests/test_vllm.py in a separate vLLM environment. vLLM check of the vllm backend: a tiny random Qwen2 text model, built here with the
same byte tokenizer as the tiny profile, answers text prompts under the caption grammar through
VllmCaptioner (LLM.chat + SamplingParams + StructuredOutputsParams); every answer must parse."""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from vidcurate.stages.answer import answer_regex, parse_answer
from vidcurate.stages.captioners import Prompt, VllmCaptioner
from vidcurate.stages.models import CHAT_TEMPLATE, _byte_tokenizer



def main():
    out = Path(sys.argv[2])
    if not (out / "config.json").exists():
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM
        tok = _byte_tokenizer()
        tok.chat_template = CHAT_TEMPLATE
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=4096, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
        torch.manual_seed(0)
        Qwen2ForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    cap = VllmCaptioner(str(out), max_images=1, structured="auto", max_model_len=2048, dtype="float32", gpu_memory_utilization=0.15)
    prompts = [Prompt([("text", "Frame at 0.00 s: (no image) Describe the clip as JSON.")], answer_regex([0.0, 1.0], 2.0, 3), 600, 1.0, s) for s in range(4)]
    t = time.time(); answers = cap.generate(prompts); dt = time.time() - t
    parsed = [parse_answer(a) for a in answers]
    print(json.dumps({"answers": len(parsed), "events": [len(p["events"]) for p in parsed], "seconds": round(dt, 2), "sample": answers[0][:160]}))


if __name__ == "__main__":
    main()
