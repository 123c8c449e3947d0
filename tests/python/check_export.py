"""Reads bitnet-qat's exported files with the real clients and reports what they see.

Run by tests/integration/export.rs with the virtual environment of scripts/install-python.sh:

  check_export.py gguf PATH EXPECTED_DIR
      Python `gguf` (llama.cpp's gguf-py): every key, its type and value against
      EXPECTED_DIR/expected.json, and for every ternary projection dequantize(TQ) x scale
      against the crate's ternary values (EXPECTED_DIR/<name>.i8) x scale, bit for bit.
  check_export.py llama PATH TOKENS_JSON N_GREEDY OUT_JSON
      llama.cpp (llama-cpp-python): the logits of every position of the token sequence (F32 KV
      cache, no BOS added) and N_GREEDY greedy tokens after it, written to OUT_JSON.
  check_export.py safetensors DIR EXPECTED_DIR
      Python `safetensors`: the shapes and dtypes of model.safetensors, the unpacked uint8
      projections (transformers' bitlinear layout) and weight_scale against the crate's values;
      `tokenizers` encodes and decodes EXPECTED_DIR/text.txt as the crate does.

Prints one JSON object of figures; exits non-zero with the first mismatch.
"""

import json
import os
import sys

import numpy as np


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def load_expected(expected_dir):
    with open(os.path.join(expected_dir, "expected.json")) as f:
        expected = json.load(f)
    values = {}
    for name, info in expected["projections"].items():
        raw = np.fromfile(os.path.join(expected_dir, info["file"]), dtype=np.int8)
        values[name] = raw.reshape(info["shape"])  # [out, in]
    return expected, values


def f32(bits):
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def check_gguf(path, expected_dir):
    from gguf import GGUFReader, GGUFValueType
    from gguf.quants import dequantize

    expected, values = load_expected(expected_dir)
    reader = GGUFReader(path)
    keys = 0
    for key, (type_name, value) in expected["keys"].items():
        field = reader.fields.get(key)
        if field is None:
            fail(f"gguf: key {key} missing")
        if field.types[0] != GGUFValueType[type_name]:
            fail(f"gguf: key {key} is {field.types}, expected {type_name}")
        got = field.contents()
        if type_name == "FLOAT32":
            if np.float32(got) != f32(value):
                fail(f"gguf: key {key} = {got!r}, expected bits {value}")
        elif got != value:
            fail(f"gguf: key {key} = {got!r}, expected {value!r}")
        keys += 1
    tensors = {t.name: t for t in reader.tensors}
    if sorted(tensors) != sorted(expected["tensors"]):
        fail(f"gguf: tensors {sorted(tensors)} != {sorted(expected['tensors'])}")
    checked = 0
    for name, want in values.items():
        t = tensors[name + ".weight"]
        if t.tensor_type.name != expected["ternary_type"]:
            fail(f"gguf: {name} is {t.tensor_type.name}")
        deq = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(want.shape)
        scale = np.float32(tensors[name + ".scale"].data[0])
        ours_scale = f32(expected["projections"][name]["gguf_scale_bits"])
        if scale.view(np.uint32) != ours_scale.view(np.uint32):
            fail(f"gguf: {name}.scale {scale} != {ours_scale}")
        theirs = deq * scale
        ours = want.astype(np.float32) * ours_scale
        if not np.array_equal(theirs.view(np.uint32), ours.view(np.uint32)):
            bad = np.argwhere(theirs != ours)[0]
            fail(f"gguf: {name} differs at {bad}: {theirs[tuple(bad)]} vs {ours[tuple(bad)]}")
        checked += want.size
    print(json.dumps({"keys": keys, "tensors": len(tensors), "ternary_values": checked}))


def check_llama(path, tokens_json, n_greedy, out_json):
    from llama_cpp import Llama

    with open(tokens_json) as f:
        tokens = json.load(f)
    n_greedy = int(n_greedy)
    llm = Llama(
        model_path=path,
        n_ctx=len(tokens) + n_greedy + 8,
        n_batch=len(tokens),
        logits_all=True,
        type_k=0,
        type_v=0,
        n_threads=int(os.environ.get("LLAMA_THREADS", "2")),
        verbose=False,
    )
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    greedy = []
    for _ in range(n_greedy):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    with open(out_json, "w") as f:
        json.dump({"logits": logits.tolist(), "greedy": greedy}, f)
    print(json.dumps({"positions": len(tokens), "vocab": logits.shape[1], "greedy": n_greedy}))


def check_safetensors(folder, expected_dir):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    expected, values = load_expected(expected_dir)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    if sorted(tensors) != sorted(expected["hf_tensors"]):
        fail(f"safetensors: tensors {sorted(tensors)} != {sorted(expected['hf_tensors'])}")
    checked = 0
    for name, want in values.items():
        hf = expected["projections"][name]["hf"]
        packed = tensors[hf + ".weight"]
        out, inp = want.shape
        if packed.dtype != np.uint8 or packed.shape != (out // 4, inp):
            fail(f"safetensors: {hf}.weight is {packed.dtype} {packed.shape}")
        # transformers' unpack_weights: row chunk i holds bits 2i..2i+1, value = code - 1.
        rows = [((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)]
        unpacked = np.concatenate(rows, axis=0)
        if not np.array_equal(unpacked, want):
            fail(f"safetensors: {hf} values differ")
        scale = tensors[hf + ".weight_scale"]
        ours = f32(expected["projections"][name]["s_bits"])
        if scale.dtype != np.float32 or scale.shape != (1,) or scale[0] != ours:
            fail(f"safetensors: {hf}.weight_scale {scale} != {ours}")
        checked += want.size
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(expected_dir, "text.txt")) as f:
        text = f.read()
    ids = tok.encode(text).ids
    if ids != expected["text_ids"]:
        fail(f"tokenizers: ids {ids[:20]}... != {expected['text_ids'][:20]}...")
    if tok.decode(ids) != text:
        fail(f"tokenizers: decode gives {tok.decode(ids)!r}")
    print(json.dumps({"tensors": len(tensors), "ternary_values": checked, "text_ids": len(ids)}))


if __name__ == "__main__":
    commands = {"gguf": check_gguf, "llama": check_llama, "safetensors": check_safetensors}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        fail(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
