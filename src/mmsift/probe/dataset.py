"""The probe's per-sample input work (image decoding, templating, tokenising, attacks), as a torch Dataset.

It holds the family adapter (processor only, no model), so ``DataLoader(num_workers>0)`` can run it in worker
processes while the model runs in the main one. A record that cannot be encoded comes back as
``{"pos": i, "error": (kind, message)}`` instead of raising, so one bad image never stops a shard.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmsift.data.records import Record, Turn
from mmsift.failures import traceback_text
from mmsift.models.base import EncodeError, FamilyAdapter
from mmsift.models.encode import RecordError, decode_images, encode_record
from mmsift.probe.perturb import find_mc_rounds, noise_image, permutation_attack, stable_seed, symbol_attack

VARIANTS = ("loss_noq", "loss_mc", "loss_sym", "loss_perm", "loss_imgnoise")
# Variants scored on the multiple-choice rounds' answer tokens only, so that plain rounds of the same record do
# not dilute the attack's effect (ARDS queries each multiple-choice round on its own).
MC_VARIANTS = ("loss_mc", "loss_sym", "loss_perm")

log = logging.getLogger(__name__)


def variants_for(signals) -> tuple[str, ...]:
    return tuple(v for v in VARIANTS if v in set(signals))


def as_list(items):
    """DataLoader collate that keeps items as they are (the model side collates after dropping failures)."""
    return list(items)


def without_question(turns: list[Turn]) -> list[Turn]:
    """The IFD "answer alone" conversation: user turns emptied (question and image placeholders removed)."""
    return [Turn(t.role, "") if t.role == "user" else t for t in turns]


def answer_runs(answer_mask):
    """Run number (0, 1, ...) of each answer position, -1 elsewhere: each contiguous run of answer tokens is one
    assistant turn, in order."""
    import torch

    m = answer_mask.long()
    starts = torch.cat([m[:1], (m[1:] - m[:-1]).clamp(min=0)])
    return torch.where(answer_mask, starts.cumsum(0) - 1, torch.full_like(m, -1))


def keep_rounds(enc, turns: list[Turn], assistant_turns):
    """``enc`` with its answer mask kept only on the given assistant turns (indices into ``turns``); None (with a
    warning) when the answer mask's runs do not line up with the assistant turns."""
    runs = answer_runs(enc.answer_mask)
    n_assistant = sum(t.role == "assistant" for t in turns)
    if int(runs.max()) + 1 != n_assistant:
        log.warning("answer mask has %d runs for %d assistant turns: multiple-choice rounds cannot be isolated",
                    int(runs.max()) + 1, n_assistant)
        return None
    wanted = [sum(t.role == "assistant" for t in turns[:i]) for i in assistant_turns]
    mask = enc.answer_mask & (runs[..., None] == runs.new_tensor(wanted)).any(-1)
    return type(enc)(enc.input_ids, mask, enc.image_mask, enc.extra, enc.n_images)


class ProbeDataset:
    """Item i: ``{"pos": i, "enc": Encoded, "variants": {signal: Encoded}}`` or ``{"pos": i, "error": ...}``."""

    def __init__(self, records: list[Record], adapter: FamilyAdapter, images_dir, *, variants=(), seed: int = 0,
                 max_length: int | None = None):
        self.records = records
        self.adapter = adapter
        self.images_dir = None if images_dir is None else str(Path(images_dir))
        self.variants = tuple(variants)
        self.seed = seed
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        try:
            images = decode_images(rec, self.images_dir)
            enc = encode_record(self.adapter, rec, images, max_length=self.max_length)
        except RecordError as e:
            return {"pos": i, "error": (e.kind, e.message), "traceback": e.traceback}
        try:
            variants = self._variants(rec, images, enc)
        except EncodeError as e:
            return {"pos": i, "error": ("encode_error", str(e)), "traceback": traceback_text(e)}
        except Exception as e:
            return {"pos": i, "error": ("encode_error", f"{type(e).__name__}: {e}"), "traceback": traceback_text(e)}
        return {"pos": i, "enc": enc, "variants": variants}

    def _variants(self, rec: Record, images, enc) -> dict:
        variants = {}
        wants_mc = set(MC_VARIANTS) & set(self.variants)
        mc_turns = [r.assistant for r in find_mc_rounds(rec.turns)] if wants_mc else []
        for name in self.variants:
            if name in MC_VARIANTS and not mc_turns:
                continue  # not a multiple-choice record: NaN
            v = self._variant(name, rec, images, enc)
            if v is not None and name in MC_VARIANTS:
                v = keep_rounds(v, rec.turns, mc_turns)
            if v is not None:
                variants[name] = v
        return variants

    def _variant(self, name: str, rec: Record, images, enc):
        import torch

        if name == "loss_noq":
            return self.adapter.encode(without_question(rec.turns), [])
        if name == "loss_mc":
            return enc  # the clean record; its mask is cut to the multiple-choice rounds by the caller
        if name == "loss_sym":
            turns = symbol_attack(rec.turns)
            return None if turns is None else self.adapter.encode(turns, images)
        if name == "loss_perm":
            turns = permutation_attack(rec.turns, seed=self.seed, key=rec.id)
            return None if turns is None else self.adapter.encode(turns, images)
        if name == "loss_imgnoise":
            if not images:
                return None
            gen = torch.Generator().manual_seed(stable_seed(self.seed, rec.id, "imgnoise") % (2**63))
            # noise on the decoded image in [0, 1], before the processor resizes it (ARDS's order)
            return self.adapter.encode(rec.turns, [noise_image(im, generator=gen) for im in images])
        raise ValueError(f"unknown variant {name!r}")
