"""`tunelab serve RUN_DIR|MODEL`: a finished run or a causal LM behind an OpenAI-compatible HTTP API with a
playground page. Thin: the server is tunelab.serve."""
from __future__ import annotations

import os

EPILOG = """examples:
  tunelab serve runs/bbc-news                                  (POST /v1/classify; playground at /)
  tunelab serve builtin:smollm2-135m-instruct --port 8001      (POST /v1/chat/completions, /v1/completions)
  tunelab serve runs/smollm2-lora-alpaca generate.temperature=0.7 --max-tokens 256
  tunelab serve runs/smollm2-rag --index runs/bbc-index        (POST /v1/answer from retrieved passages)
  TUNELAB_API_KEY=secret tunelab serve runs/bbc-news --host 0.0.0.0
then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret or anything").chat.completions.create(...)
Binds to 127.0.0.1 (this machine only) unless --host says otherwise; to reach it from elsewhere, keep it on
127.0.0.1 behind a TLS reverse proxy, or use --host 0.0.0.0 with --api-key on a network you trust."""


def cmd_serve(args) -> int:
    from tunelab.errors import TunelabError
    from tunelab.serve import API_KEY_ENV, ServeSettings

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    for name, value, low in (("--max-tokens", args.max_tokens, 1), ("--workers", args.workers, 1),
                             ("--queue-size", args.queue_size, 0), ("--batch-size", args.batch_size, 1),
                             ("--max-body-kb", args.max_body_kb, 1), ("--k", args.k, 1)):
        if value < low:
            raise TunelabError(f"serve {name}: got {value}; it must be at least {low}")
    if not 0 <= args.port <= 65535:
        raise TunelabError(f"serve --port: got {args.port}; it must be 0 to 65535 (0: any free port)")
    if not args.timeout > 0:  # also refuses nan; 0 would refuse every request with 503
        raise TunelabError(f"serve --timeout: got {args.timeout:g}; it must be more than 0 seconds")
    if not args.batch_wait_ms >= 0:
        raise TunelabError(f"serve --batch-wait-ms: got {args.batch_wait_ms:g}; it must be 0 or more")
    settings = ServeSettings(host=args.host, port=args.port, api_key=api_key, max_tokens=args.max_tokens,
                             workers=args.workers, queue_size=args.queue_size, batch_size=args.batch_size,
                             batch_wait_ms=args.batch_wait_ms, timeout_s=args.timeout,
                             max_body_bytes=args.max_body_kb * 1024, device=args.device, index=args.index, k=args.k)
    from tunelab.serve.server import LOOPBACK, bind, serve_forever

    sock = bind(settings.host, settings.port)  # before the model loads: a busy port fails at once
    from tunelab.serve.app import create_app
    from tunelab.serve.model import load_served

    served = load_served(args.run_dir, list(args.overrides), device=settings.device, index=settings.index)
    app = create_app(served, settings)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"serving {served.id} ({served.task}, {served.device}) at {url}: playground {url}/, OpenAI base_url "
          f"{url}/v1, endpoints {', '.join('/v1/' + e.replace('.', '/') for e in served.endpoints)}", flush=True)
    if settings.host not in LOOPBACK:
        print(f"warning: listening on {settings.host}, reachable from other machines"
              + ("" if api_key else " by anyone: set --api-key or $TUNELAB_API_KEY")
              + "; traffic is plain HTTP (put a TLS proxy in front)", flush=True)
    print("Ctrl-C stops the server", flush=True)
    serve_forever(app, sock, access_log=args.access_log)
    return 0


def add_commands(sub) -> None:
    """Register `serve` on the main parser's subparsers."""
    from tunelab.serve import ServeSettings as S

    s = sub.add_parser("serve", help="serve a run or a causal LM over HTTP (OpenAI-compatible) with a playground",
                       description="Serve a finished run (any task with endpoints) or a causal LM model reference: "
                                   "OpenAI's /v1/chat/completions and /v1/completions for causal LMs, /v1/classify, "
                                   "/v1/translate, /v1/answer, /v1/entities, /v1/embeddings for the other tasks, "
                                   "/health, /metrics, and a playground page at /.",
                       epilog=EPILOG)
    s.add_argument("run_dir", metavar="RUN_DIR|MODEL", help="a finished run, or a causal LM reference "
                                                            "(builtin:smollm2-135m-instruct, gguf:PATH, a folder)")
    s.add_argument("overrides", nargs="*", help="settings of the run for serving, e.g. generate.temperature=0.7 "
                                                "(request fields override them)")
    s.add_argument("--host", default=S.host, help=f"address to listen on (default {S.host}: this machine only)")
    s.add_argument("--port", type=int, default=S.port, help=f"port (default {S.port}; 0 picks a free one)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNELAB_API_KEY; none: open)")
    s.add_argument("--max-tokens", type=int, default=S.max_tokens,
                   help=f"cap on a request's max_tokens, and its default (default {S.max_tokens})")
    s.add_argument("--workers", type=int, default=S.workers,
                   help=f"requests run at once (default {S.workers}; on few cores more is slower)")
    s.add_argument("--queue-size", type=int, default=S.queue_size,
                   help=f"requests that may wait; beyond that 503 with Retry-After (default {S.queue_size})")
    s.add_argument("--batch-size", type=int, default=S.batch_size,
                   help=f"task requests run together in one batch (default {S.batch_size}; 1: no batching)")
    s.add_argument("--batch-wait-ms", type=float, default=S.batch_wait_ms,
                   help=f"how long a batch waits for more requests (default {S.batch_wait_ms})")
    s.add_argument("--timeout", type=float, default=S.timeout_s,
                   help=f"time limit of a request in seconds, queueing included (default {S.timeout_s:g})")
    s.add_argument("--max-body-kb", type=int, default=S.max_body_bytes // 1024,
                   help=f"largest request body in KiB (default {S.max_body_bytes // 1024})")
    s.add_argument("--device", default=S.device, choices=("cpu", "cuda", "auto"), help="where the model runs "
                                                                                        f"(default {S.device})")
    s.add_argument("--index", help="a vector index (tunelab index build) for /v1/answer from retrieved passages")
    s.add_argument("--k", type=int, default=S.k, help=f"passages retrieved per question with --index (default {S.k})")
    s.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    s.set_defaults(func=cmd_serve)
