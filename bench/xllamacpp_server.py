"""llama.cpp's own C++ server engine (``llama-server``'s code, as the ``xllamacpp`` package embeds
it) serving one GGUF model over HTTP until SIGTERM: the GGUF benchmark's reference peer.

    PEERS_PYTHON bench/xllamacpp_server.py --model PATH --port P --parallel N --ctx-per-slot T --threads K
"""

from __future__ import annotations

import argparse
import signal
import threading

import xllamacpp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=32, help="slots (llama-server -np)")
    parser.add_argument("--ctx-per-slot", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_parallel = args.parallel
    params.n_ctx = args.parallel * args.ctx_per_slot
    params.kv_unified = False  # a KV cache per slot, as Opta-LMX's GGUF engine has
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    server = xllamacpp.Server(params)
    print(f"listening on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
