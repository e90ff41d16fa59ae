"""Reading intermediate tensors of a model through forward pre-hooks (public ``torch.nn.Module`` API).

Why hooks and not ``output_hidden_states``: what that argument accepts, where it is forwarded (the vision tower
too) and how the returned tuple is indexed changed between transformers releases of the same major version
(a list of layers was forwarded into the vision tower in 5.24 and broke its feature selection; 5.17 and 5.22
returned a shorter tuple). A pre-hook on a decoder layer sees that layer's input, which is the same tensor on
every release, and keeps only the layers a signal needs, so memory does not grow with depth.

The convention for hidden states follows transformers' own: with L decoder layers there are L+1 hidden states;
state ``i < L`` is the input of decoder layer ``i`` (0 = the embeddings with image features scattered in), and
state ``L`` is the body's ``last_hidden_state`` (after the final norm), which the caller takes from the output.

Any other module input can be recorded the same way (e.g. a layer's ``self_attn.o_proj`` input, the attention
output before the output projection): pass it to :func:`record_inputs` under a key of your choice.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager

import torch


class CaptureError(RuntimeError):
    """A hooked module was not called exactly once during the forward pass."""


@contextmanager
def record_inputs(modules: Mapping[Hashable, torch.nn.Module]) -> Iterator[dict]:
    """Within the block, record the first input tensor of each module under its key.

    Yields the dict that fills as the model runs. On leaving the block every hook is removed, and a module that
    was not called, or was called more than once, raises :class:`CaptureError` (a model whose forward no longer
    runs the layers we hook must fail loudly, not return stale or missing tensors).
    """
    values: dict = {}
    calls: dict = {key: 0 for key in modules}
    handles = []

    def make_hook(key):
        def hook(module, args, kwargs):
            tensor = args[0] if args else kwargs.get("hidden_states")
            if not torch.is_tensor(tensor):
                raise CaptureError(f"{type(module).__name__} ({key!r}) was called without a tensor input")
            calls[key] += 1
            values[key] = tensor

        return hook

    try:
        for key, module in modules.items():
            handles.append(module.register_forward_pre_hook(make_hook(key), with_kwargs=True))
        yield values
    finally:
        for h in handles:
            h.remove()
    wrong = {key: n for key, n in calls.items() if n != 1}
    if wrong:
        detail = ", ".join(f"{key!r} called {n} times" for key, n in wrong.items())
        raise CaptureError(f"hooked modules were not called exactly once in the forward pass ({detail}); "
                           "this model's structure is not what the family adapter expects")


def hidden_state_taps(layers, indices, n_layers: int) -> dict[int, torch.nn.Module]:
    """Decoder layers whose inputs are hidden states ``indices`` (normalised, < ``n_layers``)."""
    return {i: layers[i] for i in sorted(set(indices)) if i < n_layers}
