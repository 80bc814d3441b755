"""One TransformerLens 3.9 sweep for sweep_peers.py, run with benchmarks/.venv-tl/bin/python.

TL 3.9 (the last release with HookedTransformer) lives in its own virtual environment, so this
worker imports neither actpatch nor the main environment: sweep_peers.py hands it the checkpoint
folder and the token ids in a JSON spec, and reads back a JSON with the grid and the timings.

TL does not know the checkpoint's name, and `HookedTransformer.from_pretrained` starts with a name
check; so we take the steps it takes after that check (config, state dict, `load_and_process_state_dict`)
on the local folder. Layer-norm folding and weight centring are off: folding changes the logits
by float error and centring the unembedding shifts every logit, and we compare logits with HF's."""
from __future__ import annotations

import argparse
import json
import warnings

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from transformer_lens import HookedTransformer, loading, patching

from _measure import measured, write_json

PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--sweep", choices=["A", "B"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.load(open(args.spec))
    torch.set_grad_enabled(False)
    clean, corrupt = torch.tensor(spec["clean"]), torch.tensor(spec["corrupt"])
    answers, wrong = torch.tensor(spec["answers"]), torch.tensor(spec["wrong"])
    model, hf_gap = load(spec["checkpoint"], corrupt)
    prompts = torch.arange(len(answers))

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        # logits (batch, pos, vocab); mean over prompts of logit(answer) - logit(wrong) at the last position
        return (logits[prompts, -1, answers] - logits[prompts, -1, wrong]).mean()

    model(corrupt)  # warm-up, as every tool gets
    record: dict = {"tool": "transformerlens", "sweep": args.sweep, "tl_vs_hf_max_abs_logit_diff": hf_gap,
                    "versions": {"transformer_lens": _version(), "torch": torch.__version__}}
    with measured(record):
        _, clean_cache = model.run_with_cache(clean)  # the tutorials' way: cache every hook point
        if args.sweep == "A":
            grid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, logit_diff)  # (layer, pos)
        else:
            # z of one head at END only: the by-pos function restricted to END rows; all positions would be 14× the patches.
            n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
            rows = pd.DataFrame([(layer, spec["end"], head) for layer in range(n_layers) for head in range(n_heads)], columns=["layer", "pos", "head"])
            flat = patching.get_act_patch_attn_head_out_by_pos(model, corrupt, clean_cache, logit_diff, index_axis_names=None, index_df=rows)
            grid = flat.reshape(n_layers, n_heads)  # (layer, head)
    record.update(grid=grid.tolist(), patches=int(grid.numel()), forward_equivalents=float(grid.numel()))
    write_json(args.out, record)


def load(checkpoint: str, tokens: torch.Tensor) -> tuple[HookedTransformer, float]:
    """A HookedTransformer with the checkpoint's weights, unprocessed, and its max |logit - HF logit| on `tokens`."""
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = loading.get_pretrained_model_config(checkpoint, hf_cfg=hf.config.to_dict(), fold_ln=False, device="cpu", dtype=torch.float32)
        state_dict = loading.get_pretrained_state_dict(checkpoint, cfg, hf, dtype=torch.float32)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, **PROCESSING)
    model.eval()
    gap = float((model(tokens) - hf(input_ids=tokens).logits).abs().max())
    if gap > 1e-4:
        raise SystemExit(f"TransformerLens logits differ from HF's by {gap:.2e} (> 1e-4); check the processing settings")
    del hf, state_dict
    return model, gap


def _version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


if __name__ == "__main__":
    main()
