"""llama.cpp's side of `gguf-decode`: loads a GGUF file once with llama-cpp-python, then for
each request line on stdin ("<prompt token ids as JSON>\t<new tokens>") runs greedy decoding
(the prompt evaluated, then one token at a time through the KV cache) and answers one line of
JSON: the seconds it took and the tokens. (`logits_all`: llama-cpp-python keeps the logits it
returns only then; our generation computes the prompt's logits too.) A request for 0 new tokens
answers the logits of every position of the sequence instead.

  llama_decode.py MODEL.gguf THREADS CONTEXT
"""

import json
import sys
import time

import numpy as np
from llama_cpp import Llama


def main(path, threads, context):
    llm = Llama(
        model_path=path,
        n_ctx=int(context),
        n_threads=int(threads),
        n_threads_batch=int(threads),
        logits_all=True,
        type_k=0,
        type_v=0,
        verbose=False,
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        prompt_json, n = line.rstrip("\n").split("\t")
        prompt, n = json.loads(prompt_json), int(n)
        if n == 0:
            # The logits of every position of the sequence.
            llm.reset()
            llm.eval(prompt)
            print(json.dumps({"logits": np.asarray(llm.scores[: len(prompt)]).tolist()}), flush=True)
            continue
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        out = []
        for i in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            if i + 1 < n:
                llm.eval([token])
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "tokens": out}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
