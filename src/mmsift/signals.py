"""Canonical signal names: the contract between the probe (which writes them) and the scorers (which read them)."""

from __future__ import annotations

# Always written by the probe (cheap bookkeeping that several methods and reports read).
BOOKKEEPING = ("loss", "n_tokens", "n_answer_tokens", "n_rounds", "n_images")

SCALARS = {
    "loss": "mean cross-entropy over answer (assistant) tokens",
    "n_tokens": "text tokens in the whole conversation (image tokens excluded)",
    "n_answer_tokens": "answer tokens the loss is averaged over",
    "n_rounds": "user->assistant rounds",
    "n_images": "images in the record",
    "el2n": "mean over answer tokens of ||softmax(logits) - onehot(y)||_2",
    "loss_noq": "answer loss with the question and image removed",
    "tok_loss_max": "largest per-token answer loss",
    "tok_loss_std": "standard deviation of per-token answer losses",
    "sv_entropy": "entropy of the normalised singular values of the sample's hidden states",
    "sv_tau": "largest normalised singular value sigma_1 / sum(sigma)",
    "loss_mc": "answer loss over the multiple-choice rounds' answer tokens only (multiple-choice only; NaN otherwise)",
    "loss_sym": "loss_mc after the symbol attack (multiple-choice rounds only; NaN for other records)",
    "loss_perm": "loss_mc after the permutation attack (multiple-choice rounds only; NaN for other records)",
    "loss_imgnoise": "answer loss with the image noised (image records only; NaN otherwise)",
    "loss_ref": "answer loss under a reference model (selfcheck: the proxy before fine-tuning); from select --reference-run",
    "is_mc": "1 when a turn is multiple-choice with lettered options",
    "fmt": "instruction format, ARDS's first-turn rule: phrase | mc | img_caption | region_desc | region_bbox | other_image | text_only",
}

VECTORS = {
    "last": "hidden state of the final token at the probe layer",
    "last_final": "hidden state of the final token at the final layer (after the final norm)",
    "mean": "mean of the hidden states over all tokens at the probe layer",
    "attn_pool": "final token's attention-weighted sum of last-layer hidden states (mean over heads)",
    "img_mean": "L2-normalised mean over image tokens, concatenated over the chosen layers",
    "txt_mean": "L2-normalised mean over text tokens, concatenated over the chosen layers",
    "attn_img": "COINCIDE: tanh of the mean attention output (o_proj input) over image tokens, L2-normalised, "
                "concatenated over the feature layers",
    "attn_txt": "COINCIDE: the same over the text tokens after the first image",
}

# Per token (store.TokenTable, tokens.parquet): one value per answer token, with its characters in its turn.
TOKENS = {
    "token_loss": "cross-entropy of each answer token, with the token's characters in its assistant turn "
                  "(mmsift tokens; probe --signals token_loss)",
}


def describe(name: str) -> str:
    if name in SCALARS:
        return SCALARS[name]
    if name in VECTORS:
        return VECTORS[name]
    if name in TOKENS:
        return TOKENS[name]
    if name.startswith("cap_"):
        return f"judge rating 0-5 for capability {name[4:]!r}"
    if name.startswith("style_"):
        return f"judge label (0/1) for interaction style {name[6:]!r}"
    return "user-provided signal"
