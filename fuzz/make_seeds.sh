#!/usr/bin/env bash
# Regenerates the committed seed corpora fuzz/corpus/<target>/ from the shared files: copies of
# small real files (config.json, the safetensors index, tokenizers, prompts) plus the shrunk and
# synthetic seeds that build-fuzz/fuzz/make_seeds writes (run scripts/fuzz.sh once first, or
# build the make_seeds target of build-fuzz). Seeds the fuzzers found (crash-*, regressions)
# live beside them as seed_found_* and are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${MXLM_SHARED:-$(cd .. && pwd)/shared}
out=fuzz/corpus
ninja -C build-fuzz -j 2 fuzz/make_seeds >/dev/null
find "$out" -name 'seed_*' ! -name 'seed_found_*' -delete 2>/dev/null || true
MXLM_SHARED=$shared build-fuzz/fuzz/make_seeds "$out"
mkdir -p "$out"/{hf_json,spm,prompt}
cp "$shared/models/tinymix-26m/config.json" "$out/hf_json/seed_tinymix_config.json"
cp "$shared/models/tinymix-26m/model.safetensors.index.json" "$out/hf_json/seed_tinymix_index.json"
cat >"$out/hf_json/seed_rope_list_eos.json" <<'JSON'
{"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000, "hidden_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": null,
 "bos_token_id": 1, "eos_token_id": [2, 32000], "tie_word_embeddings": true}
JSON
cp "$shared/models/stories260K/tok512.model" "$out/spm/seed_tok512.model"
cp "$shared/models/tinymix-26m/tokenizer.model" "$out/spm/seed_tinymix.model"
printf 'Once upon a time, there was a little girl named Lily.' >"$out/prompt/seed_story.txt"
printf 'caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87\n\ttabs  and  spaces' >"$out/prompt/seed_unicode.txt"
printf 'bad \xc0\xaf overlong \xed\xa0\x80 surrogate \xe2\x82' >"$out/prompt/seed_invalid.txt"
printf '<s></s><unk><0x0A>\xe2\x96\x81' >"$out/prompt/seed_pieces.txt"
du -b "$out"/*/* | sort -n | tail -3
