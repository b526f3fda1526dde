"""The `hotlora` command, the front door over the parts: `serve` runs the server, `fetch` prepares the
model cache, `chat` is the client's terminal chat, `train` runs the trainer.

It lives beside the parts rather than inside one of them, so that the server needs neither the client nor
the trainer: each subcommand is a small module that imports its part only when it runs.
"""
