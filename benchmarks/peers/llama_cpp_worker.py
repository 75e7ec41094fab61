"""llama.cpp side of ``benchmarks/peers_cpu.py``: one model, one thread count, timed in this process.

Runs under the peer's own Python (``.venv-peers``, built by ``make bench-peers``), so llama-cpp-python never
enters the package's environment. It reads one JSON request per line on stdin and answers one JSON line on
stdout:

* ``{"op": "info"}`` -> versions, the model's tensor bytes, the thread counts;
* ``{"op": "prefill", "tokens": [...]}`` -> ``{"seconds": s, "next": token}``: a fresh context evaluates the
  prompt in batches of ``n_batch`` and the greedy next token is read from the last row of logits;
* ``{"op": "decode", "token": t, "steps": n}`` -> ``{"seconds": s, "tokens": [...]}``: ``n`` one-token
  evaluations after the prompt, each followed by a greedy argmax over the logits, as the torch side does.

Usage (by ``peers_cpu.py``): ``python llama_cpp_worker.py MODEL.gguf THREADS N_CTX N_BATCH REPACK``, where
``REPACK`` is ``1`` for llama.cpp's default (weights repacked into its CPU "extra buffer types", the AMX and
interleaved layouts) or ``0`` to load them as stored (``use_extra_bufts = false`` in the model parameters).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    import llama_cpp
    from llama_cpp import Llama

    path, threads, n_ctx, n_batch, repack = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "1"
    if not repack:
        # Llama() takes its model parameters from llama_model_default_params() and exposes no argument for this
        # field, so the defaults are wrapped.
        defaults = llama_cpp.llama_model_default_params

        def without_repacking():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = without_repacking
    llm = Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
        return int(np.argmax(logits))

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "info":
            reply = {
                "llama_cpp_python": llama_cpp.__version__,
                "tensor_bytes": int(llm._model.size()),
                "threads": threads,
                "n_batch": n_batch,
                "repack": repack,
                "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
            }
        elif request["op"] == "prefill":
            llm.reset()
            start = time.perf_counter()
            llm.eval(request["tokens"])
            token = greedy()
            reply = {"seconds": time.perf_counter() - start, "next": token}
        elif request["op"] == "decode":
            token, produced = request["token"], []
            start = time.perf_counter()
            for _ in range(request["steps"]):
                llm.eval([token])
                token = greedy()
                produced.append(token)
            reply = {"seconds": time.perf_counter() - start, "tokens": produced}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
