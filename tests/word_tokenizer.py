"""A tiny GPT-2 with a byte-level word tokenizer, for tests of prompts under GPT-2-style tokens.

Words are single tokens with GPT-2's leading-space form ('Ġname'), and numbers split into
two-digit tokens ('Ġ17', '32'), as GPT-2's own vocabulary does for the years 1700-1799 that
greater-than uses; SmolLM2, by contrast, splits digits one by one. The vocabulary holds every
word of the bundled tasks plus any `extra` text."""

from __future__ import annotations

import re

import torch
import transformers as tf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

import actpatch as ap
from actpatch.tasks.factual import RELATIONS
from actpatch.tasks.greater_than import NOUNS, TEMPLATE
from actpatch.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES


def task_texts() -> list[str]:
    """Every text the bundled task generators put into prompts and answers."""
    texts = [*TEMPLATES, *NAMES, *PLACES, *OBJECTS, TEMPLATE, *NOUNS]
    for relation in RELATIONS.values():
        texts.append(relation.template)
        texts.extend(word for fact in relation.facts for word in fact)
    return texts


def gpt2_style_model(extra: tuple[str, ...] = (), *, bos: bool = False) -> ap.Model:
    """A two-layer random GPT-2 whose tokenizer has the words of `task_texts()` and `extra`.

    `bos=True` makes the tokenizer put <bos> before every prompt, as LLaMA-style ones do."""
    words = set()
    for text in [*task_texts(), *extra]:
        words.update(re.findall(r"[^\W\d]+|[^\w\s]", text.replace("{", " ").replace("}", " ")))
    words.update(f"{i:02d}" for i in range(100))
    words.update(str(i) for i in range(10))
    vocab = {"<unk>": 0, "<bos>": 1}
    for word in sorted(words):
        for form in (word, "Ġ" + word):
            vocab.setdefault(form, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            pre_tokenizers.Split(
                Regex("Ġ?[0-9]{2}"), behavior="isolated"
            ),  # 'Ġ1732' -> 'Ġ17', '32'
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)]
        )
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<bos>"
    )
    torch.manual_seed(0)
    config = tf.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        vocab_size=len(vocab),
        n_positions=64,
        bos_token_id=1,
        eos_token_id=0,
    )
    name = "tiny-gpt2-words-bos" if bos else "tiny-gpt2-words"
    return ap.Model.from_hf(tf.AutoModelForCausalLM.from_config(config).eval(), fast, name=name)
