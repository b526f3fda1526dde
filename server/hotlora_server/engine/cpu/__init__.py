"""The CPU wing: everything CPU-specific on the forward path, chosen once at load by `install`.

What runs where, and why:
- 4-bit base layers: bitsandbytes' fused kernel where it has one (AVX512-BF16), with bf16 prefill GEMMs
  (`prefill_gemm`); elsewhere hotlora's fixed-order 4-bit kernel (`linear4`), because bitsandbytes'
  fallback dequantizes the whole weight at every forward. `--cpu-4bit` forces either.
- float32 linear layers (the output layer; every layer with `--quantize none`): the fixed-order kernel.
- LoRA deltas and batch-invariant attention: the generic core takes the kernels from `CpuPath.kernels`.
- bitsandbytes' packed CPU layout: `CpuPath` keeps it intact when PEFT reads the model (`bnb`).
- decode steps' thread count: chosen while serving by timing steps (`threads`), unless a flag fixes it.
All of these come from one compiled library (`kernels`); without a C compiler (or `--no-cpu-kernels`)
the server runs on bitsandbytes and BLAS alone and says that batch invariance is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from ...settings import Settings
from ..device_path import DevicePath
from . import bnb, kernels, kernels_build, linear, linear4, prefill_gemm
from .threads import DecodeThreads

log = logging.getLogger(__name__)


class CpuPathError(RuntimeError):
    """A path the settings force cannot run on this machine."""


@dataclass(frozen=True)
class CpuPath(DevicePath):
    """What `install` chose: the kernels library, the 4-bit path, and whether outputs are batch-invariant.
    Its hooks keep bitsandbytes' packed CPU weights exact when PEFT or a merge reads them (`bnb`), and run
    each decode step on the thread count `threads` chooses."""

    threads: DecodeThreads = field(default_factory=lambda: DecodeThreads(torch.get_num_threads()))

    @contextmanager
    def weights_held(self, model: torch.nn.Module) -> Iterator[None]:
        with bnb.packing_held(model):
            yield

    def to_standard_layout(self, model: torch.nn.Module) -> None:
        bnb.unpack_cpu_weights(model)

    def products(self, layers: Sequence[torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor] | None:
        return linear4.many(layers, x)

    @contextmanager
    def decode_step(self, rows: int) -> Iterator[None]:
        with self.threads.step(rows):
            yield

    @property
    def decode_threads(self) -> int:
        return self.threads.trying or self.threads.current


def install(model: torch.nn.Module, settings: Settings, dtype: torch.dtype) -> CpuPath:
    """Choose and install the CPU forward path for `model` (loaded on the CPU, before its first forward)."""
    lib = (
        kernels_build.build(settings.kernels_dir) if settings.cpu_kernels and dtype == torch.float32 else None
    )
    if settings.cpu_4bit == "hotlora" and lib is None:
        raise CpuPathError(
            "--cpu-4bit hotlora needs the compiled CPU kernels: a C compiler (cc), float32 compute and "
            "--cpu-kernels (see the warnings above)"
        )
    most = torch.get_num_threads()
    threads = DecodeThreads(most, fixed=settings.cpu_decode_threads)
    path = replace(_install_linears(model, settings, lib), threads=threads)
    head = linear.install_output(model, lib) if lib is not None else None
    if lib is not None and head is not None:
        log.info(
            "logits through the fixed-order kernel (%s), the output layer read as %s", lib.path.name, head
        )
    if lib is None:
        log.warning(
            "batch invariance is off: without the compiled CPU kernels a request's output may depend on "
            "what else shares its batch (%s)",
            "disabled by --no-cpu-kernels" if not settings.cpu_kernels else "see above",
        )
    log.info(
        "CPU path: %s; batch invariance possible: %s", path.kernel, "yes" if path.batch_invariant else "no"
    )
    log.info(
        "decode threads: %s",
        f"{threads.current} (--cpu-decode-threads)"
        if threads.fixed
        else f"{threads.current} of {most}, fewer while timed steps show other programs slowing them",
    )
    return path


def _install_linears(model: torch.nn.Module, settings: Settings, lib: kernels.CpuKernels | None) -> CpuPath:
    if settings.quantize == "none":
        if lib is None:
            return CpuPath(None, "float32 (BLAS)", False)
        count = linear.install_all(model, lib)
        return CpuPath(lib, f"float32 (hotlora fixed-order kernel, {count} layers)", True)
    if settings.quantize == "int8":
        log.warning("int8 on the CPU runs bitsandbytes' own path: not batch-invariant")
        return CpuPath(lib, "int8 (bitsandbytes)", False)
    fused = [m for m in model.modules() if bnb.packs_on_cpu(m)]
    use_bnb = settings.cpu_4bit == "bitsandbytes" or (settings.cpu_4bit == "auto" and (fused or lib is None))
    if not use_bnb:
        assert lib is not None
        taken, layers = linear4.install(model, lib)
        if taken < layers:
            log.warning(
                "%d of %d 4-bit layers have a layout the kernel does not take: bitsandbytes runs them",
                layers - taken,
                layers,
            )
        why = "bitsandbytes has no fused kernel for this CPU" if not fused else "--cpu-4bit hotlora"
        return CpuPath(lib, f"{settings.quantize} (hotlora fixed-order 4-bit kernel: {why})", taken == layers)
    if not fused:
        log.warning(
            "4-bit layers through bitsandbytes' CPU fallback, which dequantizes every weight at every forward "
            "(slow; not batch-invariant): %s",
            "--cpu-4bit bitsandbytes" if settings.cpu_4bit == "bitsandbytes" else "no C compiler",
        )
        return CpuPath(lib, f"{settings.quantize} (bitsandbytes, dequantized at every forward)", False)
    if lib is not None:
        log.info(
            "decode calls bitsandbytes' fused 4-bit kernel directly in %d layers",
            bnb.install_packed_decode(model, lib),
        )
    if settings.cpu_prefill == "bf16":
        layers, cached = prefill_gemm.install(model, int(settings.cpu_prefill_cache_gb * 2**30))
        log.info("prefill through bf16 GEMMs for %d 4-bit layers, %d with cached weights", layers, cached)
        prefill_gemm.warm_up(model)
    return CpuPath(lib, f"{settings.quantize} (bitsandbytes fused AVX512-BF16 kernel)", lib is not None)
