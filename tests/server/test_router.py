"""The router in this process, without workers: the handshake, refusals and its own faults, over a
real socket (each turn of its loop is run by the test)."""

import msgspec
import pytest
import zmq

from radixrt.server.router import Router
from radixrt.wire import protocol as p


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
