"""Answer-token losses: what a model predicts at the tokens the loss counts (the probe's and the trainer's loss).

Token t is scored from the logits at t-1, and logits are computed only at answer positions (the LM head never runs
over the whole sequence).
"""

from __future__ import annotations

import numpy as np
import torch

from mmsift.models.base import Batch, FamilyAdapter


def token_losses(adapter: FamilyAdapter, model, last_hidden: torch.Tensor, batch: Batch, *, want_el2n: bool):
    """Per answer token: (sample row, CE loss, ||p - onehot||_2 or None), all float32 on the model device."""
    target_mask = batch.answer_mask[:, 1:] & batch.attention_mask[:, 1:].bool()
    rows, cols = target_mask.nonzero(as_tuple=True)
    h = last_hidden[rows, cols]  # predicts token cols + 1
    targets = batch.input_ids[rows, cols + 1]
    logits = adapter.lm_head(model, h).float()
    logp = torch.log_softmax(logits, dim=-1)
    lp_y = logp.gather(1, targets[:, None]).squeeze(1)
    ce = -lp_y
    el2n = None
    if want_el2n:
        p = logp.exp()
        el2n = (p.pow(2).sum(-1) - 2 * lp_y.exp() + 1.0).clamp(min=0).sqrt()
    return rows, ce, el2n


def segment_mean(rows, values, b):
    """Per-sample mean of per-token ``values`` (sample of each token in ``rows``) over ``b`` samples, and the
    token counts; NaN for a sample without tokens."""
    s = torch.zeros(b, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())
    n = torch.zeros(b, dtype=torch.float64, device=values.device).index_add_(
        0, rows, torch.ones_like(values, dtype=torch.float64))
    return s / n, n  # 0/0 -> NaN for samples without answer tokens


def answer_loss(adapter, model, batch: Batch) -> np.ndarray:
    """Mean answer CE per sample from a forward pass without hidden states (the attacks' second passes)."""
    last_hidden, _ = adapter.forward(model, batch)
    rows, ce, _ = token_losses(adapter, model, last_hidden, batch, want_el2n=False)
    mean, _ = segment_mean(rows, ce, len(batch))
    return mean.cpu().numpy()


def batch_answer_loss(adapter, model, batch: Batch) -> torch.Tensor:
    """Mean CE over every answer token of the batch (differentiable): the training loss."""
    last_hidden, _ = adapter.forward(model, batch)
    _, ce, _ = token_losses(adapter, model, last_hidden, batch, want_el2n=False)
    return ce.mean()
