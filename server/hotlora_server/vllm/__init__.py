"""The vLLM engine (`--engine vllm`): hotlora stays the API and the adapter control plane (store, watcher,
blends, auth, metrics) and vLLM generates, over HTTP: a child vLLM server hotlora starts, or running ones
(`--vllm-url`, a fleet routed by adapter affinity). No torch in this package: vLLM lives in its own
environment, and the model stays in its process.
"""
