"""The ``radixrt`` command."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from radixrt.engine_args import MODEL_HELP, add_engine_options, check_engine_options, engine_kwargs, worker_flags


def generate(args: argparse.Namespace) -> int:
    from radixrt.engine import Engine
    from radixrt.model import ModelNotFoundError
    from radixrt.outputs import RequestFailed
    from radixrt.params import SamplingParams

    print(f"loading {args.model or 'the default model (SmolLM2-135M-Instruct)'} ...", file=sys.stderr)
    try:
        engine = Engine(args.model)
        prompt = engine.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
        params = SamplingParams(
            max_new_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            stop=tuple(args.stop),
        )
        for piece in engine.stream(prompt, params):
            print(piece, end="", flush=True)
    except (ModelNotFoundError, ValueError) as e:
        print(f"radixrt: {e}", file=sys.stderr)
        return 2
    except RequestFailed as e:
        print(f"\nradixrt: the request failed: {e}", file=sys.stderr)
        return 1
    print()
    return 0


def _engine(args: argparse.Namespace):
    import torch

    from radixrt.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    return Engine(args.model, detokenize=False, **engine_kwargs(args))


def worker(args: argparse.Namespace) -> int:
    from radixrt.cache.disk_store import DiskCacheBusy
    from radixrt.model import ModelNotFoundError
    from radixrt.server.worker import run_worker
    from radixrt.wire.sockets import Keys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        keys = Keys.load(args.keys, pair="worker") if args.keys else None
        engine = _engine(args)
    except (ModelNotFoundError, ValueError, DiskCacheBusy) as e:
        print(f"radixrt worker: {e}", file=sys.stderr)
        return 2
    run_worker(args.connect, args.name or f"{socket.gethostname()}-{os.getpid()}", engine, keys, args.parent_pid)
    return 0


def serve(args: argparse.Namespace) -> int:
    from radixrt.http.access import configured_keys
    from radixrt.wire.sockets import check_exposure, is_loopback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    address = args.address or f"tcp://{args.host}:{args.port}"
    try:
        check_engine_options(args)
        if args.host_cache_gb and args.workers:
            from radixrt.cache.kv_tiers import check_host_memory

            check_host_memory(int(args.host_cache_gb * (1 << 30)) * args.workers, f"{args.workers} host KV tiers")
        for a in (address, args.worker_address or "ipc://"):
            check_exposure(a, args.keys, args.insecure)
        args.api_keys, args.admin = configured_keys(
            args.api_key, args.api_key_file, args.admin_key, args.admin_key_file, os.environ
        )
        http_host = args.http_host or args.host
        if (
            args.http_port is not None
            and not args.api_keys
            and not args.insecure
            and not is_loopback(f"tcp://{http_host}:0")
        ):
            raise ValueError(
                f"the HTTP API on {http_host} is reachable from other machines: give API keys (--api-key-file "
                "FILE, RADIXRT_API_KEYS or --api-key KEY) so that only key holders get in, or --insecure to "
                "serve it to anyone"
            )
    except ValueError as e:
        print(f"radixrt serve: {e}", file=sys.stderr)
        return 2
    if args.worker_address:
        return _serve(args, address, args.worker_address)
    with tempfile.TemporaryDirectory(prefix="radixrt-") as private:  # the local workers' ipc:// socket
        return _serve(args, address, f"ipc://{Path(private) / 'workers'}")


def _serve(args: argparse.Namespace, address: str, worker_address: str) -> int:
    import zmq
    from transformers import AutoTokenizer

    from radixrt.model import ModelNotFoundError
    from radixrt.model.loader import hf_directory
    from radixrt.server.router import Router
    from radixrt.server.serve import LocalWorkers, run_until_stopped
    from radixrt.wire.sockets import Keys

    try:
        keys = Keys.load(args.keys) if args.keys else None
        admin_pair = Keys.load(args.keys, pair="admin") if args.keys and args.http_port is not None else None
        if admin_pair is not None:
            admin_pair.client_pair()  # the HTTP front end's: missing, say so now
        print(f"loading {args.model or 'the default model (SmolLM2-135M-Instruct)'} ...", file=sys.stderr, flush=True)
        model_dir = hf_directory(args.model)  # converts a GGUF file once, before the workers look for it
        tokenizer = AutoTokenizer.from_pretrained(model_dir) if any(model_dir.glob("tokenizer*")) else None
        router = Router(
            tokenizer,
            address,
            worker_address,
            model=model_dir.name,
            keys=keys,
            insecure=args.insecure,
            policy=args.policy,
            max_inflight_per_client=args.max_inflight,
            balance_abs=args.balance_abs,
            balance_rel=args.balance_rel,
            worker_timeout=args.worker_timeout,
            clients_choose_namespace=args.clients_choose_namespace,
        )
    except (ModelNotFoundError, ValueError, OSError, zmq.ZMQError) as e:
        print(f"radixrt serve: {e}", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    worker_args = ["--connect", router.worker_address, *worker_flags(args, threads)]
    if args.workers and not router.worker_address.startswith("ipc://"):
        print(f"radixrt: workers join at {router.worker_address}", file=sys.stderr)
    http = None
    if args.http_port is not None:
        from radixrt.http.app import HttpConfig, HttpServer

        host = args.http_host or args.host
        config = HttpConfig(
            router.address,
            api_keys=args.api_keys,
            namespace_by=args.namespace_by,
            keys=admin_pair,
            admin_key=args.admin,
            max_connections=args.http_max_connections,
            tokenizer=router.tokenizer,
        )
        http = HttpServer(config, host, args.http_port)
        try:
            port = http.start()
        except RuntimeError as e:
            router.close()
            print(f"radixrt serve: {e}", file=sys.stderr)
            return 2
        print(
            f"radixrt: HTTP at http://{host}:{port} (OpenAI-compatible: /v1/completions, /v1/chat/completions)",
            flush=True,
        )
    try:
        run_until_stopped(router, LocalWorkers(args.workers, worker_args, disk_cache=args.disk_cache))
    finally:
        if http is not None:
            http.stop()
    return 0


def keys(args: argparse.Namespace) -> int:
    from radixrt.wire.sockets import write_keys

    d = args.directory
    write_keys(d)
    print(
        f"wrote CURVE key pairs to {d} (the ones it lacked). `radixrt serve --keys {d}` lets in, when it starts:\n"
        f"  clients  (client.key, {d}/clients/*.key): tenants, each cached in a namespace of its own key\n"
        f"  admins   (admin.key, {d}/admins/*.key): any namespace and tenant, every tenant's figures, flushing\n"
        f"  workers  (worker.key, {d}/workers/*.key): `radixrt worker --keys DIR`\n"
        "Every peer needs server.key and the secret of its own pair: give a client server.key and "
        "client.key_secret, an admin server.key and admin.key_secret, a remote worker server.key and "
        "worker.key_secret. Never hand out server.key_secret. To let in another key, put its public "
        f"half (*.key) in {d}/clients/, admins/ or workers/ and restart serve.",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radixrt", description="A prefix-caching LLM serving runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="generate a continuation of one prompt and print it as it comes",
        description="Generate a continuation of PROMPT and print it as it comes.",
    )
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", help=MODEL_HELP)
    gen.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default 1)")
    gen.add_argument("--seed", type=int, help="seed for sampling")
    gen.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the output before this text (repeat for several)",
    )
    gen.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the model's chat template"
    )
    gen.set_defaults(run=generate)

    srv = commands.add_parser(
        "serve",
        help="start the router and local workers; clients talk to it over ZeroMQ",
        description="Start the router and local worker processes, print the address once every "
        "worker is up, and serve until Ctrl-C or SIGTERM (which stop every process "
        "this started). A worker that dies is restarted, with backoff.",
    )
    add_engine_options(srv)
    srv.add_argument("--workers", type=int, default=1, help="local worker processes (default 1; 0: only remote ones)")
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other needs --keys or --insecure)",
    )
    srv.add_argument("--port", type=int, default=5555, help="client port (default 5555; 0 picks a free one)")
    srv.add_argument(
        "--address",
        help="the client address as a ZeroMQ endpoint, tcp://HOST:PORT or ipc://PATH (overrides --host and --port)",
    )
    srv.add_argument(
        "--worker-address",
        help="where workers connect (default: an ipc:// path, local workers only; "
        "give tcp://HOST:PORT to let `radixrt worker --connect` join from elsewhere)",
    )
    srv.add_argument(
        "--policy",
        choices=["cache_aware", "round_robin"],
        default="cache_aware",
        help="how requests are spread over workers (default cache_aware: longest cached prefix)",
    )
    srv.add_argument(
        "--balance-abs",
        type=int,
        default=2,
        help="cache_aware goes to the least loaded worker when the "
        "busiest has more than this many requests more (default 2) ...",
    )
    srv.add_argument(
        "--balance-rel", type=float, default=1.5, help="... and more than this many times as many (default 1.5)"
    )
    srv.add_argument(
        "--max-inflight",
        type=int,
        default=1024,
        help="most requests one tenant may have in flight (default 1024): each client, or, through the HTTP "
        "API, each API key (without keys, all HTTP callers together)",
    )
    srv.add_argument(
        "--clients-choose-namespace",
        action="store_true",
        help="with --keys, let clients name their requests' cache namespace freely; by default a client's "
        "namespaces are nested under one derived from its key, so that no client can read another's cached "
        "prefixes through cache hits and their timing. Give it only when all clients trust each other",
    )
    srv.add_argument(
        "--worker-timeout",
        type=float,
        default=2.0,
        help="seconds of silence after which a worker counts as dead (default 2)",
    )
    srv.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without CURVE keys (or, for HTTP, without --api-key)",
    )
    srv.add_argument(
        "--http-port", type=int, help="also serve the OpenAI-compatible HTTP API on this port (0 picks one)"
    )
    srv.add_argument("--http-host", help="the HTTP API's address (default: --host)")
    srv.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key the HTTP API accepts as 'Authorization: Bearer KEY' (repeat for several); visible to "
        "other users of this machine in `ps`: prefer --api-key-file or RADIXRT_API_KEYS (comma-separated)",
    )
    srv.add_argument(
        "--api-key-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of API keys, one a line (blank lines and # comments skipped); repeat for several",
    )
    srv.add_argument(
        "--admin-key",
        metavar="KEY",
        help="the HTTP API's admin key: every tenant's cached prefixes in /stats.json, the workers and requests "
        "in flight in /health, and /metrics (also RADIXRT_ADMIN_KEY, or --admin-key-file; visible in `ps`)",
    )
    srv.add_argument("--admin-key-file", metavar="FILE", help="a file holding the admin key")
    srv.add_argument(
        "--http-max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="HTTP connections served at once; more are answered 503 (default 1024)",
    )
    srv.add_argument(
        "--namespace-by",
        choices=["key", "user", "none"],
        default="key",
        help="what keeps HTTP tenants' cached prefixes apart: the API key (default), the request's "
        "'user' field, or nothing",
    )
    srv.set_defaults(run=serve)

    wrk = commands.add_parser(
        "worker",
        help="run a worker that joins a router (`serve --worker-address tcp://...`)",
        description="Run the engine as a worker of the router at --connect.",
    )
    wrk.add_argument("--connect", required=True, metavar="ADDRESS", help="the router's worker address, tcp://HOST:PORT")
    wrk.add_argument(
        "--name", help="the worker's name (default HOST-PID); a worker that rejoins under its name replaces itself"
    )
    wrk.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    add_engine_options(wrk)
    wrk.set_defaults(run=worker)

    from radixrt.replay.command import add_parser as add_replay

    add_replay(commands, add_engine_options)

    key = commands.add_parser(
        "keys",
        help="write CURVE key pairs for serving beyond this machine",
        description="Write the server's key pair and one pair per role (client, admin, worker) into DIRECTORY, "
        "with clients/, admins/ and workers/ folders for more public keys; pairs it already holds are kept.",
    )
    key.add_argument("directory")
    key.set_defaults(run=keys)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
