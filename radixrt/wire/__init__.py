"""The wire between clients, the router and workers: messages (``protocol``), sockets and keys (``sockets``)."""
