"""Talk to a running ``radixrt serve`` from Python: ``Client`` (blocking) and ``AsyncClient``
(asyncio), one client with two faces. A prompt is text, token ids (a list or an int array), or a
chat (a list of ``{"role", "content"}`` dicts, to which the model's chat template is applied on the
server)."""

from radixrt.client.aio import AsyncClient
from radixrt.client.blocking import Client
from radixrt.client.core import DEFAULT_ADDRESS, InvalidRequest, Prompt, ServerError
from radixrt.outputs import RequestFailed
from radixrt.wire.tokenizer_files import load_tokenizer

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "Client",
    "InvalidRequest",
    "Prompt",
    "RequestFailed",
    "ServerError",
    "load_tokenizer",
]
