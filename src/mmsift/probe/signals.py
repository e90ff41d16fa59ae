"""What the probe computes from one forward pass of a batch (the signals of docs/methods.md).

Conventions (all per sample, padding never counts: every reduction is masked by ``attention_mask``):
- Answer tokens: positions t whose answer mask is set (see models.py); token t is scored from the logits at t-1.
  Logits are computed only at those positions (the LM head never runs over the whole sequence).
- ``loss`` mean CE over answer tokens; ``tok_loss_max`` / ``tok_loss_std`` (population std, ddof=0) over them;
  ``el2n`` mean over answer tokens of ||softmax(logits) - onehot(y)||_2. A sample without answer tokens: NaN.
- Layers index the L+1 hidden states as transformers returns them (0 = embeddings, -1 = output of the last
  decoder layer after the final norm); ``layer=-2`` is the output of the second-to-last decoder layer.
- ``last``: hidden state of the final (non-pad) token at ``layer``; ``mean``: mean over all non-pad tokens there.
- ``last_final``: hidden state of the final token at the final layer (hidden state -1, after the final norm):
  ARDS's conversation vector takes both halves, this and ``attn_pool``, from that same layer.
- ``attn_pool`` = sum_{t < final} a_t H_t (ARDS: t = 1..L-1), a = the final token's attention row at
  the last decoder layer, mean over heads, recomputed from that layer's q/k projections with RoPE
  (``FamilyAdapter.final_token_attention``); H = hidden states -1.
- ``img_mean`` / ``txt_mean``: per feature layer, the mean of the hidden state over image-token / text-token
  positions, L2-normalised, concatenated over the feature layers. A sample with no image tokens gets zeros for
  ``img_mean``. Default feature layers (hidden-state indices): the outputs of COINCIDE's decoder layers 3, 7, 11,
  15, 19 of its 24-layer model, scaled to the model's depth.
- ``attn_img`` / ``attn_txt``: COINCIDE's own features. Per feature layer, the input of that decoder layer's
  ``self_attn.o_proj`` (the attention output before the output projection, read with a pre-hook, capture.py),
  averaged over the image tokens / over the text tokens after the first image token (every token for a
  text-only sample), then tanh, then L2-normalised; concatenated over the layers. Default layers (decoder-layer
  indices): 3, 7, 11, 15, 19 of 24, scaled to the model's depth; ``feature_layers`` overrides them (read as
  decoder-layer indices for these two signals).
- ``sv_entropy`` / ``sv_tau``: singular values of H (n_tokens x D, non-pad tokens, at ``layer``) from the
  eigenvalues of the smaller Gram matrix (H H^T or H^T H) in float64 with ``torch.linalg.eigvalsh``, batched on
  the model's device. Eigenvalues below max(eig) * size * eps(float64) are set to zero: padding rows add exact
  zeros in theory and rounding noise in practice, and this keeps batched and single results equal.
- ``token_loss``: every answer token's CE, kept per sample (not reduced) and stored with the token's characters in
  its assistant turn (probe/tokens.py, ``store.TokenTable``).
- Vectors can be reduced to ``vector_dim`` columns with a seeded Gaussian random projection (N(0, 1/k) entries,
  seed from (seed, signal name, width)), identical in every process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mmsift import signals as names_
from mmsift.models.base import Batch, FamilyAdapter
from mmsift.models.capture import record_inputs
from mmsift.models.losses import segment_mean, token_losses
from mmsift.probe.perturb import stable_seed
from mmsift.probe.tokens import TOKEN_SIGNALS, split_token_losses

FORWARD_SCALARS = ("loss", "el2n", "tok_loss_max", "tok_loss_std", "sv_entropy", "sv_tau")
BOOK_SCALARS = ("n_tokens", "n_answer_tokens", "n_rounds", "n_images")
VARIANT_LOSSES = ("loss_noq", "loss_mc", "loss_sym", "loss_perm", "loss_imgnoise")
TEXT_SIGNALS = ("is_mc", "fmt")
VECTOR_SIGNALS = ("last", "last_final", "mean", "attn_pool", "img_mean", "txt_mean", "attn_img", "attn_txt")
COINCIDE_VECTORS = ("attn_img", "attn_txt")
KNOWN = frozenset(FORWARD_SCALARS + BOOK_SCALARS + VARIANT_LOSSES + TEXT_SIGNALS + VECTOR_SIGNALS + TOKEN_SIGNALS)
# COINCIDE's feature layers in its reference model (TinyLLaVA-2.0B, whose language model has 24 decoder layers).
COINCIDE_LAYERS = (3, 7, 11, 15, 19)
COINCIDE_DEPTH = 24

log = logging.getLogger(__name__)


def resolve_signals(methods=None, signals=None) -> tuple[str, ...]:
    """Signals to compute: the methods' needs, the extra names asked for, and the bookkeeping signals."""
    from mmsift.scorers import required_signals

    wanted = set(names_.BOOKKEEPING)
    if methods:
        needed = required_signals(methods)
        # Columns the probe does not make (judge ratings cap_*, style_*, scale_*...) come from other stages.
        others = sorted(needed - KNOWN)
        if others:
            log.info("not computed by the probe (from the judge or your own arrays): %s", ", ".join(others))
        wanted |= needed & KNOWN
    if signals:
        unknown = sorted(set(signals) - KNOWN)
        if unknown:
            raise ValueError(f"the probe cannot compute {unknown}; it computes: {', '.join(sorted(KNOWN))}")
        wanted |= set(signals)
    return tuple(sorted(wanted))


@dataclass(frozen=True)
class SignalOptions:
    layer: int = -2
    feature_layers: tuple[int, ...] | None = None  # hidden-state indices for img_mean / txt_mean
    vector_dim: int | None = None
    seed: int = 0


def default_feature_layers(n_layers: int) -> tuple[int, ...]:
    """Hidden-state indices for img_mean/txt_mean: the outputs of COINCIDE's decoder layers (3, 7, 11, 15, 19 of
    24, 0-based), i.e. hidden states 4, 8, 12, 16, 20 of 24 layers, scaled to ``n_layers`` (same relative depth)."""
    idx = [min(n_layers, max(1, round((k + 1) * n_layers / COINCIDE_DEPTH))) for k in COINCIDE_LAYERS]
    return tuple(sorted(set(idx)))


def coincide_layers(n_layers: int, opts: "SignalOptions | None" = None) -> tuple[int, ...]:
    """Decoder-layer indices whose ``o_proj`` input makes attn_img/attn_txt: ``opts.feature_layers`` when given,
    else COINCIDE's 3, 7, 11, 15, 19 of 24 scaled to ``n_layers`` (same relative depth, at most 19/24)."""
    if opts is not None and opts.feature_layers:
        bad = [i for i in opts.feature_layers if not -n_layers <= i < n_layers]
        if bad:
            raise ValueError(f"feature layers {bad} are out of range for attn_img/attn_txt: the model has "
                             f"{n_layers} decoder layers (-{n_layers}..{n_layers - 1})")
        return tuple(sorted({i % n_layers for i in opts.feature_layers}))
    return tuple(sorted({min(n_layers - 1, round(k * n_layers / COINCIDE_DEPTH)) for k in COINCIDE_LAYERS}))


def hidden_layers_needed(names, n_layers: int, opts: SignalOptions) -> list[int]:
    """Hidden-state indices (normalised to 0..L) the forward pass must return for ``names``."""
    total = n_layers + 1
    # A layer index out of range would otherwise wrap around (``% total``) to some other layer, silently.
    for i in (opts.layer, *(opts.feature_layers or ())):
        if not -total <= i < total:
            raise ValueError(f"layer {i} is out of range: the model has {total} hidden states (-{total}..{total - 1})")
    need = set()
    if {"last", "mean", "sv_entropy", "sv_tau"} & set(names):
        need.add(opts.layer % total)
    if "attn_pool" in names:
        need.update({total - 2, total - 1})
    if "last_final" in names:
        need.add(total - 1)
    if {"img_mean", "txt_mean"} & set(names):
        need.update(i % total for i in (opts.feature_layers or default_feature_layers(n_layers)))
    if set(COINCIDE_VECTORS) & set(names):
        coincide_layers(n_layers, opts)  # range check up front (these are read from o_proj, not hidden states)
    return sorted(need)


def spectrum_stats(h: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sv_entropy, sv_tau) per sample from hidden states h (B, T, D) and the non-pad mask (B, T)."""
    x = h.double() * valid[..., None].double()
    b, t, d = x.shape
    gram = x @ x.transpose(1, 2) if t <= d else x.transpose(1, 2) @ x
    eig = torch.linalg.eigvalsh(gram)
    top = eig.max(dim=-1, keepdim=True).values.clamp(min=0)
    eig = torch.where(eig > top * max(t, d) * torch.finfo(torch.float64).eps, eig, torch.zeros_like(eig))
    sv = eig.sqrt()
    total = sv.sum(-1, keepdim=True)
    p = sv / total
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    tau = sv.max(-1).values / total.squeeze(-1)
    return ent.cpu().numpy(), tau.cpu().numpy()


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


_PROJECTIONS: dict[tuple, torch.Tensor] = {}


def project(name: str, v: torch.Tensor, dim: int | None, seed: int) -> torch.Tensor:
    """Seeded Gaussian random projection of (B, D) vectors to ``dim`` columns (unchanged when D <= dim)."""
    d = v.shape[1]
    if dim is None or d <= dim:
        return v
    key = (name, d, dim, seed, str(v.device))
    if key not in _PROJECTIONS:
        g = torch.Generator().manual_seed(stable_seed(seed, name, d, dim) % (2**63))
        r = torch.randn(d, dim, generator=g, dtype=torch.float32) / np.sqrt(dim)
        _PROJECTIONS[key] = r.to(v.device)
    return v.float() @ _PROJECTIONS[key]


def batch_signals(adapter: FamilyAdapter, model, batch: Batch, names, opts: SignalOptions) -> dict[str, np.ndarray]:
    """Forward-pass signals of one batch (rows in batch order). Text and variant signals are added by the runner."""
    names = set(names)
    n_layers = adapter.num_layers(model)
    total = n_layers + 1
    layers = hidden_layers_needed(names, n_layers, opts)
    taps = {}
    if set(COINCIDE_VECTORS) & names:
        _, decoder = adapter.decoder_layers(model)
        taps = {i: decoder[i].self_attn.o_proj for i in coincide_layers(n_layers, opts)}
    with record_inputs(taps) as attn_out:
        last_hidden, hs = adapter.forward(model, batch, hidden_layers=layers)
    b = len(batch)
    valid = batch.attention_mask.bool()
    last_pos = valid.long().sum(1) - 1
    rows_b = torch.arange(b, device=valid.device)
    out: dict[str, np.ndarray] = {}

    rows, ce, el2n = token_losses(adapter, model, last_hidden, batch, want_el2n="el2n" in names)
    mean, count = segment_mean(rows, ce, b)
    out["loss"] = mean.cpu().numpy()
    out["n_answer_tokens"] = count.cpu().numpy().astype(np.int64)
    if "token_loss" in names:  # per sample, not a column: probe/tokens.py stores it with its characters
        out["token_loss"] = split_token_losses(rows, ce, b)
    if "el2n" in names:
        out["el2n"] = segment_mean(rows, el2n, b)[0].cpu().numpy()
    if "tok_loss_max" in names:
        mx = torch.full((b,), float("nan"), dtype=torch.float64, device=ce.device)
        mx = mx.scatter_reduce(0, rows, ce.double(), reduce="amax", include_self=False)
        out["tok_loss_max"] = mx.cpu().numpy()
    if "tok_loss_std" in names:
        sq, _ = segment_mean(rows, ce.double().pow(2), b)
        out["tok_loss_std"] = (sq - mean.pow(2)).clamp(min=0).sqrt().cpu().numpy()
    out["n_tokens"] = (valid & ~batch.image_mask).sum(1).cpu().numpy().astype(np.int64)

    h = hs[opts.layer % total] if hs is not None and (opts.layer % total) in layers else None
    if "last" in names:
        out["last"] = project("last", h[rows_b, last_pos].float(), opts.vector_dim, opts.seed).cpu().numpy()
    if "mean" in names:
        out["mean"] = project("mean", _masked_mean(h.float(), valid), opts.vector_dim, opts.seed).cpu().numpy()
    if "sv_entropy" in names or "sv_tau" in names:
        ent, tau = spectrum_stats(h, valid)
        out["sv_entropy"], out["sv_tau"] = ent, tau
    if "last_final" in names:
        out["last_final"] = project("last_final", hs[total - 1][rows_b, last_pos].float(), opts.vector_dim,
                                    opts.seed).cpu().numpy()
    if "attn_pool" in names:
        a = adapter.final_token_attention(model, hs[total - 2], batch.attention_mask, last_pos).mean(1)  # (B, T)
        before = torch.arange(a.shape[1], device=a.device)[None, :] < last_pos[:, None]
        a = a * before
        pooled = torch.einsum("bt,btd->bd", a, hs[total - 1].float())
        out["attn_pool"] = project("attn_pool", pooled, opts.vector_dim, opts.seed).cpu().numpy()
    if {"img_mean", "txt_mean"} & names:
        feat = [i % total for i in (opts.feature_layers or default_feature_layers(n_layers))]
        img = valid & batch.image_mask
        txt = valid & ~batch.image_mask
        for name, mask in (("img_mean", img), ("txt_mean", txt)):
            if name in names:
                parts = [_normalise(_masked_mean(hs[i].float(), mask)) * mask.any(1, keepdim=True) for i in feat]
                out[name] = project(name, torch.cat(parts, dim=1), opts.vector_dim, opts.seed).cpu().numpy()
    if taps:
        img = valid & batch.image_mask
        out.update(coincide_features(attn_out, sorted(taps), img, valid, names, opts))
    return out


def coincide_features(attn_out: dict, layer_ids, img: torch.Tensor, valid: torch.Tensor, names,
                      opts: SignalOptions) -> dict[str, np.ndarray]:
    """attn_img / attn_txt from the recorded ``o_proj`` inputs (B, T, D) of ``layer_ids`` (see the module doc)."""
    pos = torch.arange(img.shape[1], device=img.device)[None, :]
    has_img = img.any(1, keepdim=True)
    first_img = torch.where(img, pos, torch.full_like(pos, img.shape[1])).min(1, keepdim=True).values
    # text after the first image token (COINCIDE's "language" part); every text token when there is no image
    txt = valid & ~img & ((pos > first_img) | ~has_img)
    out = {}
    for name, mask, keep in (("attn_img", img, has_img), ("attn_txt", txt, txt.any(1, keepdim=True))):
        if name in names:
            parts = [_normalise(torch.tanh(_masked_mean(attn_out[i].float(), mask))) * keep for i in layer_ids]
            out[name] = project(name, torch.cat(parts, dim=1), opts.vector_dim, opts.seed).cpu().numpy()
    return out
