"""The router in this process: the handshake, refusals and its own faults, liveness, peers that
claim to be workers, slow clients and tenants under keys, over real sockets (each turn of its loop
is run by the test; a worker here is a socket that speaks the worker's protocol)."""

import os
import stat
import threading
import time

import msgspec
import pytest
import zmq
import zmq.auth

from radixrt.server.router import Router
from radixrt.wire import protocol as p
from radixrt.wire.protocol import key_id
from radixrt.wire.sockets import Keys, client_socket, write_keys


@pytest.fixture
def router():
    r = Router(None, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    yield r
    r.close()


@pytest.fixture
def client(router):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(router.address)
    yield sock
    sock.close()
    context.term()


def ask(router: Router, sock: zmq.Socket, frame: bytes):
    sock.send(frame)
    for _ in range(500):
        router.poll(0.01)
        if sock.poll(0):
            return p.decoder(p.ReplyMessage).decode(sock.recv())
    raise AssertionError("no reply")


def test_hello_comes_first_and_checks_the_version(router, client):
    refused = ask(router, client, p.encode(p.Generate("a", prompt="hi")))
    assert (refused.code, refused.id) == ("hello_required", "a")
    assert ask(router, client, p.encode(p.Hello(99))).code == "version"
    welcome = ask(router, client, p.encode(p.Hello(p.PROTOCOL_VERSION)))
    assert isinstance(welcome, p.Welcome) and welcome.workers == 0


def test_refusals_name_the_request_and_the_field(router, client):
    ask(router, client, p.encode(p.Hello(p.PROTOCOL_VERSION)))
    bad = ask(router, client, msgspec.msgpack.encode({"type": "generate", "id": "b", "params": {"top_p": "x"}}))
    assert (bad.code, bad.id) == ("bad_message", "b") and "$.params.top_p" in bad.message
    none = ask(router, client, p.encode(p.Generate("c", input_ids=[1, 2])))
    assert (none.code, none.id) == ("unavailable", "c")
    assert ask(router, client, p.encode(p.GetHealth())) == p.Health(False, [], 0)


def test_a_fault_of_the_router_is_reported_and_the_router_goes_on(router, client, monkeypatch):
    ask(router, client, p.encode(p.Hello(p.PROTOCOL_VERSION)))

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(router, "_generate", broken)
    reply = ask(router, client, p.encode(p.Generate("d", input_ids=[1])))
    assert (reply.code, reply.id) == ("internal", "d") and "boom" in reply.message
    assert ask(router, client, p.encode(p.GetHealth())).inflight == 0


# ---- workers: liveness by what arrived, and peers that are not the worker they name ------------


def register(name: str, page_size: int = 4, vocab_size: int = 100) -> bytes:
    return p.encode(p.Register(p.PROTOCOL_VERSION, name, 1, "m", vocab_size, 64, page_size, 16))


@pytest.fixture
def peers(router):
    """``peers(identity, address=worker address, keys=None)``: DEALER sockets, closed after the test."""
    context = zmq.Context()
    made = []

    def make(identity: bytes, address: str | None = None, keys: Keys | None = None, pair=None) -> zmq.Socket:
        """``pair``: a key pair of the client role's folder to connect with instead of ``keys``' own."""
        if pair is None:
            sock = client_socket(context, address or router.worker_address, keys, identity=identity)
        else:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, identity)
            sock.curve_publickey, sock.curve_secretkey = pair
            sock.curve_serverkey = keys.server_public()
            sock.connect(address)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)
    context.term()


def turns(router: Router, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        router.poll(0.01)


def test_a_long_turn_loses_no_worker_that_kept_beating(router, client, peers, monkeypatch):
    router.worker_timeout = 0.5
    worker, beats, stop = peers(b"w0"), peers(b"w0/heartbeat"), threading.Event()
    worker.send(register("w0"))
    turns(router, 5, lambda: "w0" in router.workers)
    handle = router._handle_client

    def slow(*args) -> None:  # a client's message that takes three worker timeouts to handle
        time.sleep(1.5)
        handle(*args)

    monkeypatch.setattr(router, "_handle_client", slow)

    def beat() -> None:
        while not stop.wait(0.05):
            beats.send(p.encode(p.Heartbeat("w0")))

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        ask(router, client, p.encode(p.Hello(p.PROTOCOL_VERSION)))
        assert "w0" in router.workers and router.counters.workers_lost == 0
    finally:
        stop.set()
        thread.join()
    turns(router, 5, lambda: "w0" not in router.workers)  # now it is silent: lost
    assert router.counters.workers_lost == 1


def test_a_peer_cannot_speak_for_a_worker(router, peers):
    router.worker_timeout = 0.5
    peers(b"w0").send(register("w0"))
    turns(router, 5, lambda: "w0" in router.workers)
    impostor = peers(b"evil")
    impostor.send(register("w1"))  # a name that is not its identity
    impostor.send(register("w0"))  # another worker's name
    bad = msgspec.msgpack.decode(register("w2"))
    peers(b"w2").send(msgspec.msgpack.encode({**bad, "page_size": 0}))
    for _ in range(12):  # heartbeats for w0 from a peer that is not w0's heartbeat
        impostor.send(p.encode(p.Heartbeat("w0")))
        turns(router, 0.1)
    assert sorted(router.workers) == [] and router.counters.workers_lost == 1  # w0 went silent


def test_odd_worker_stats_reach_the_client_and_the_router_goes_on(router, client, peers):
    worker = peers(b"w0")
    worker.send(register("w0"))
    turns(router, 5, lambda: "w0" in router.workers)
    ask(router, client, p.encode(p.Hello(p.PROTOCOL_VERSION)))
    client.send(p.encode(p.GetStats(prefixes=True)))
    turns(router, 5, lambda: worker.poll(0))
    query = p.decoder(p.ToWorker).decode(worker.recv())
    assert isinstance(query, p.StatsQuery) and query.namespaces == [None]  # no keys: an admin's own
    stats = {"prompt_tokens": "lots", "cached_tokens": 7, "note": None}
    worker.send(p.encode(p.WorkerStats(query.query, stats, [p.Prefix([1, 2], 2, 3)])))
    turns(router, 5, lambda: client.poll(0))
    reply = p.decoder(p.ReplyMessage).decode(client.recv())
    assert reply.router["prompt_tokens"] == 0 and reply.router["cached_tokens"] == 7
    assert reply.workers["w0"]["top_prefixes"] == [
        {"tokens": [1, 2], "length": 2, "hits": 3, "namespace": None, "text": None}
    ]


def test_a_client_that_does_not_read_is_cut_off_and_its_requests_end(router, peers):
    router.links.clients.setsockopt(zmq.SNDHWM, 8)  # for connections made from now on
    slow = peers(b"slow", router.address)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.send(p.encode(p.Hello(p.PROTOCOL_VERSION)))
    turns(router, 5, lambda: b"slow" in router.clients)
    big = p.encode(p.Error("padding", "x" * 60_000))
    for _ in range(10_000):
        router.links.to_client(b"slow", big)
        if b"slow" in router.links.cut:
            break
    assert b"slow" in router.links.cut
    router.poll(0)
    assert b"slow" not in router.clients and router.counters.clients_lost == 1


def test_a_worker_that_does_not_read_is_dropped(router, peers):
    router.links.workers.setsockopt(zmq.SNDHWM, 8)  # for connections made from now on
    stuck = peers(b"w0")
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.send(register("w0"))
    turns(router, 5, lambda: "w0" in router.workers)
    big = p.Cancel(["x" * 60_000])
    for _ in range(10_000):
        router.links.to_worker(b"w0", big)
        if router.links.stalled:
            break
    router.poll(0)
    assert "w0" not in router.workers and router.counters.workers_lost == 1


# ---- tenants: with keys, a client's namespace, limit and view come from its key -------------


@pytest.fixture
def keyed(tmp_path):
    directory = write_keys(tmp_path / "keys").directory
    zmq.auth.create_certificates(directory / "clients", "b")  # a second tenant
    router = Router(
        None, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", keys=Keys.load(directory), max_inflight_per_client=2
    )
    yield router, directory
    router.close()


def test_with_keys_each_tenant_has_its_namespace_limit_and_view(keyed, peers):
    router, directory = keyed
    worker = peers(b"w0", router.worker_address, Keys.load(directory, "worker"))
    worker.send(register("w0"))
    turns(router, 5, lambda: "w0" in router.workers)
    a = peers(b"a", router.address, Keys.load(directory))
    admin = peers(b"admin", router.address, Keys.load(directory, "admin"))
    b_pair = zmq.auth.load_certificate(directory / "clients" / "b.key_secret")
    b = peers(b"b", router.address, Keys.load(directory), pair=b_pair)
    for sock in (a, b, admin):
        ask(router, sock, p.encode(p.Hello(p.PROTOCOL_VERSION)))

    def submitted(sock: zmq.Socket, msg: p.Generate) -> p.Submit:
        sock.send(p.encode(msg))
        turns(router, 10, lambda: worker.poll(0))
        return p.decoder(p.ToWorker).decode(worker.recv())

    a_key = zmq.auth.load_certificate(directory / "client.key")[0].decode()
    first = submitted(a, p.Generate("1", input_ids=[1, 2], namespace="mine", tenant="someone-else"))
    assert (first.namespace, first.tenant) == (f"{key_id(a_key)}/mine", key_id(a_key))
    submitted(a, p.Generate("2", input_ids=[1, 2]))
    refused = ask(router, a, p.encode(p.Generate("3", input_ids=[1, 2])))
    assert (refused.code, refused.id) == ("too_many_requests", "3")
    other = submitted(b, p.Generate("1", input_ids=[1, 2]))
    assert other.namespace == other.tenant == key_id(b_pair[0].decode()) != key_id(a_key)
    chosen = submitted(admin, p.Generate("1", input_ids=[1, 2], namespace="x", tenant="t"))
    assert (chosen.namespace, chosen.tenant) == ("x", "t")
    for msg in (p.FlushCache(), p.GetStats(prefixes=True, all_namespaces=True)):
        assert ask(router, a, p.encode(msg)).code == "forbidden"
    assert ask(router, a, p.encode(p.GetHealth())) == p.Health(True)
    assert ask(router, admin, p.encode(p.GetHealth())).workers == ["w0"]
    a.send(p.encode(p.GetStats(prefixes=True)))
    turns(router, 5, lambda: worker.poll(0))
    assert p.decoder(p.ToWorker).decode(worker.recv()).namespaces == [key_id(a_key)]


def test_a_client_key_does_not_let_a_worker_in(keyed, peers):
    router, directory = keyed
    peers(b"w0", router.worker_address, Keys.load(directory)).send(register("w0"))  # the client pair
    turns(router, 1)
    assert router.workers == {}


def test_key_secrets_are_private_and_each_role_has_a_pair(tmp_path):
    old = os.umask(0o022)  # a usual umask: files would be world-readable by default
    try:
        keys = write_keys(tmp_path / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    secrets = sorted(path.name for path in keys.directory.glob("*.key_secret"))
    assert secrets == ["admin.key_secret", "client.key_secret", "server.key_secret", "worker.key_secret"]
    for path in keys.directory.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert all(len(keys.public_keys(role)) == 1 for role in ("client", "admin", "worker"))
