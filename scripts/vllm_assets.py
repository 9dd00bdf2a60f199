"""Build what the vLLM tier needs, under a git-ignored directory (run with the vLLM virtualenv).

1. A Hugging Face copy of the packaged SmolLM2 GGUF: transformers reads the GGUF (dequantized)
   but will not save a GGUF-quantized model, so a fresh model is built from its config and the
   dequantized weights are loaded into it; the tokenizer is saved beside it.
2. LoRA adapters made with peft (rank 8 on q_proj/v_proj, random weights, so each visibly
   changes the answers); and `lora-rank16`, of a rank above the server's `--max-lora-rank 8`,
   which vLLM must refuse (an adapter that does not match the base).

Usage: ``.venv-vllm/bin/python scripts/vllm_assets.py GGUF OUT_DIR``. Idempotent: a finished
step (its marker file exists) is skipped.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ADAPTERS = {"lora-alpha": (1, 8), "lora-beta": (2, 8), "lora-gamma": (3, 8), "lora-rank16": (4, 16)}  # seed, rank


def build_base(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        print(f"base model: {out} (exists)")
        return
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(source.state_dict())
    fresh.save_pretrained(work, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(work)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    print(f"base model: {out}")


def build_adapter(base: Path, out: Path, seed: int, rank: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").is_file():
        print(f"adapter: {out} (exists)")
        return
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    for name, weight in peft_model.named_parameters():  # strong enough to change greedy answers
        if "lora_" in name:
            with torch.no_grad():
                weight.mul_(4.0)
    peft_model.save_pretrained(out)
    print(f"adapter: {out}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    gguf, root = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    base = root / "smollm2-135m-hf"
    root.mkdir(parents=True, exist_ok=True)
    build_base(gguf, base)
    for name, (seed, rank) in ADAPTERS.items():
        build_adapter(base, root / "adapters" / name, seed, rank)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
