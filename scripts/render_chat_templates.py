#!/usr/bin/env python3
"""Render reference outputs for the chat templates in tests/data/chat_templates/.

For every NAME.jinja in that directory and every test case below, this writes
NAME.CASE.txt holding the exact rendered string (UTF-8, nothing added), or
NAME.CASE.error holding just the exception message when rendering raises.

The Jinja environment reproduces the one Hugging Face transformers builds in
apply_chat_template (transformers.utils.chat_template_utils._compile_jinja_template):
  ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                extensions=[jinja2.ext.loopcontrols])
  filters["tojson"], globals["raise_exception"], globals["strftime_now"]
(transformers also registers an AssistantTracker extension for the
{% generation %} tag; none of these templates uses it, so it is left out.)
keep_trailing_newline stays at jinja2's default (False), as in transformers,
so a template's final newline never reaches the output.

Special tokens are passed the way transformers passes special_tokens_map:
only those the model's tokenizer_config.json sets; a token that is null there
is not passed at all (it stays undefined in the template).
`tools` and `documents` are passed as None, as transformers passes them when a
conversation has none (for these templates the output is the same as leaving
them undefined).

It also writes cases.json beside the renderings: the cases (messages and
add_generation_prompt), the special tokens of each template and the fixed date,
so that tests/chat_template_test.cc renders with exactly these inputs.

Usage: python3 scripts/render_chat_templates.py   (regenerates everything in place)
Requires jinja2 (the committed outputs were made with jinja2 3.1.6).
"""

import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "data", "chat_templates")

# strftime_now normally returns the current time; a FIXED date is used here so
# that the renderings are reproducible (Llama 3.1 / 3.2 print "Today Date").
FIXED_NOW = datetime(2026, 7, 26)

# Special tokens per template, as in each model's tokenizer_config.json.
# Tokens that are null in the config are omitted (undefined in the template).
# Taken from the same sources as the templates (see the README there), except:
# zephyr-7b-beta (only eos_token is in the source), SmolLM2 (bos/eos from a
# third-party copy of its config), DeepSeek-R1-Distill-Qwen-32B (the tokens of
# DeepSeek-R1-Distill-Llama-8B), Mistral-7B-Instruct-v0.2 and gemma-2-2b-it (the
# tokens of their siblings v0.1 / gemma-7b-it). The templates use only
# bos_token and eos_token; zephyr and SmolLM2 use none of the unverified ones.
BOS_S = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}  # bos_token is null
GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
PHI3 = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
DEEPSEEK = {"bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",  # <｜begin▁of▁sentence｜>
            "eos_token": "<\uff5cend\u2581of\u2581sentence\uff5c>"}    # <｜end▁of▁sentence｜>

SPECIAL_TOKENS = {
    "TinyLlama-1.1B-Chat-v1.0": {**BOS_S, "pad_token": "<unk>"},
    "zephyr-7b-beta": {**BOS_S, "pad_token": "</s>"},
    "Llama-2-7b-chat-hf": BOS_S,
    "Meta-Llama-3-8B-Instruct": LLAMA3,
    "Llama-3.1-8B-Instruct": LLAMA3,
    "Llama-3.2-3B-Instruct": LLAMA3,
    "Mistral-7B-Instruct-v0.1": BOS_S,
    "Mistral-7B-Instruct-v0.2": BOS_S,
    "Mistral-7B-Instruct-v0.3": BOS_S,
    "Mixtral-8x7B-Instruct-v0.1": BOS_S,
    "Mistral-Nemo-Instruct-2407": BOS_S,
    "Qwen2-7B-Instruct": QWEN,
    "Qwen2.5-7B-Instruct": QWEN,
    "Qwen3-0.6B": QWEN,
    "Phi-3-mini-4k-instruct": PHI3,
    "Phi-3.5-mini-instruct": PHI3,
    "gemma-2-2b-it": GEMMA,
    "gemma-3-1b-it": GEMMA,
    "SmolLM2-135M-Instruct": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                              "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"},
    "deepseek-llm-7b-chat": DEEPSEEK,
    "DeepSeek-R1-Distill-Qwen-32B": {**DEEPSEEK, "pad_token": DEEPSEEK["eos_token"]},
    "Yi-1.5-34B-Chat": {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>",
                        "pad_token": "<unk>", "unk_token": "<unk>"},
    "openchat-3.5-0106": {"bos_token": "<s>", "eos_token": "<|end_of_turn|>", "unk_token": "<unk>"},
    "falcon-7b-instruct": {"eos_token": "<|endoftext|>"},  # bos/pad/unk are null
}


def _msg(role, content):
    return {"role": role, "content": content}


MULTI = [
    _msg("user", "Hi"),
    _msg("assistant", "Hello! How can I help?"),
    _msg("user", "Tell me a joke."),
    _msg("assistant", "Why did the chicken cross the road?"),
    _msg("user", "Why?"),
]

# case name -> (messages, add_generation_prompt)
CASES = {
    "single": ([_msg("user", "Hello!")], True),
    "system": ([
        _msg("system", "You are a helpful assistant."),
        _msg("user", "What is 2+2?"),
        _msg("assistant", "2+2 is 4."),
        _msg("user", "And 3+3?"),
    ], True),
    "multi": (MULTI, True),
    "nogen": (MULTI[:-1], False),
    "unicode": ([_msg("user", "\u00dcn\u00efc\u00f6d\u00e9 \u2713 \u2014 \u732b and \"quotes\" and\nnewlines\tand tabs  ")], True),
}


# --- the transformers environment -------------------------------------------

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Same signature and behaviour as transformers' tojson filter
    # (jinja2's built-in tojson escapes HTML characters and sorts keys).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise TemplateError(message)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, name, messages, add_generation_prompt):
    template = env.from_string(source)
    return template.render(messages=messages,
                           add_generation_prompt=add_generation_prompt,
                           tools=None, documents=None,
                           **SPECIAL_TOKENS[name])


def write_bytes(path, text):
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))


def write_manifest():
    manifest = {
        "now": FIXED_NOW.isoformat(),
        "cases": {name: {"messages": messages, "add_generation_prompt": gen}
                  for name, (messages, gen) in CASES.items()},
        "special_tokens": SPECIAL_TOKENS,
    }
    write_bytes(os.path.join(DATA_DIR, "cases.json"),
                json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n")


def main():
    env = make_env()
    write_manifest()
    names = sorted(f[:-len(".jinja")] for f in os.listdir(DATA_DIR) if f.endswith(".jinja"))
    missing = [n for n in names if n not in SPECIAL_TOKENS]
    if missing:
        sys.exit("no special tokens listed for: " + ", ".join(missing))
    for name in names:
        with open(os.path.join(DATA_DIR, name + ".jinja"), "rb") as f:
            source = f.read().decode("utf-8")
        for case, (messages, add_generation_prompt) in CASES.items():
            base = os.path.join(DATA_DIR, "%s.%s" % (name, case))
            for stale in (base + ".txt", base + ".error"):
                if os.path.exists(stale):
                    os.remove(stale)
            # deep copy so no template can see another case's objects
            msgs = json.loads(json.dumps(messages))
            try:
                out = render(env, source, name, msgs, add_generation_prompt)
            except Exception as e:  # noqa: BLE001 - any render failure is recorded
                write_bytes(base + ".error", str(e))
                print("%-30s %-8s error: %s" % (name, case, e))
                continue
            write_bytes(base + ".txt", out)
            print("%-30s %-8s %d chars" % (name, case, len(out)))


if __name__ == "__main__":
    main()
