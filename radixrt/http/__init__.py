"""The OpenAI-compatible HTTP API: a client of the router (``radixrt serve --http-port``)."""
