"""The torch side shared by the server and the trainer (they never import each other): the base model.

Unlike the rest of `hotlora_adapters`, this subpackage may import torch and transformers; nothing in the
registry imports it.
"""
