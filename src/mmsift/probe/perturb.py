"""ARDS's attacks and the instruction-format label, as pure functions of a record's turns (plus image noise).

Multiple-choice (MC) detection: a user turn with at least two option lines labelled with consecutive capital
letters from A (``A. text``, ``A) text`` or ``(A) text``, one per line) followed by an assistant turn whose answer
is one of those letters (``B``, ``(B)``, ``B.``, ``B. the option text``, ``The answer is B.``).

- Symbol attack: option letters A, B, C, ... become Q, W, E, R, ... (keyboard order, :data:`ATTACK_SYMBOLS`)
  keeping each label's punctuation; the answer letter is remapped the same way.
- Permutation attack: option texts are reordered with a permutation seeded by (seed, record key, round); labels
  stay A, B, C, ... and the answer letter follows its option. An identity draw is rotated by one so that every
  MC item is actually perturbed.
- Image noise: the forward diffusion process at step 300 of 1000 with a sigmoid beta schedule from 1e-5 to 5e-3,
  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, as ARDS's code does it: on the decoded image's pixels in [0, 1],
  *before* the processor resizes and normalises it (:func:`noise_image`). The result is clipped to [0, 1] and
  stored as 8-bit pixels; the code's float-to-byte conversion wraps values outside [0, 1] around (1.1 becomes
  ~0.1), an artefact mmsift does not copy.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

from mmsift.data.records import Turn

ATTACK_SYMBOLS = "QWERTYUIOPASDFGHJKLZXCVBNM"

_OPTION = re.compile(r"^(?P<indent>\s*)(?:\((?P<p>[A-Z])\)|(?P<l>[A-Z])(?P<punct>[.)]))(?P<sep>\s+)(?P<text>\S.*)$")
_ANSWER = re.compile(
    r"^\s*(?P<pre>(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*:?\s*)?"
    r"(?P<open>\()?(?P<letter>[A-Z])(?(open)\))(?P<rest>(?:[.):]\s*.*)?)\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class Option:
    line: int  # line number inside the question
    label: str
    text: str
    style: str  # "(A)", "A." or "A)"
    indent: str
    sep: str

    def render(self, label: str, text: str | None = None) -> str:
        lab = f"({label})" if self.style == "(A)" else label + self.style[1]
        return f"{self.indent}{lab}{self.sep}{self.text if text is None else text}"


@dataclass(frozen=True)
class MCRound:
    user: int  # index of the user turn in ``turns``
    assistant: int  # index of the answering assistant turn
    options: tuple[Option, ...]
    answer: str  # the correct option's letter
    answer_span: tuple[int, int]  # where the letter sits in the assistant text


def parse_options(question: str) -> tuple[Option, ...]:
    """The lettered option lines of a question (A, B, C, ... consecutive), or () when there are fewer than 2."""
    found = []
    for i, line in enumerate(question.split("\n")):
        m = _OPTION.match(line)
        if not m:
            continue
        letter = m.group("p") or m.group("l")
        style = "(A)" if m.group("p") else "A" + m.group("punct")
        found.append(Option(i, letter, m.group("text").rstrip(), style, m.group("indent"), m.group("sep")))
    # Keep the first run A, B, C, ... (a stray "I. " line elsewhere is not an option list).
    run: list[Option] = []
    for opt in found:
        if opt.label == chr(ord("A") + len(run)):
            run.append(opt)
        elif run and opt.label == "A":
            break
    return tuple(run) if len(run) >= 2 else ()


def parse_answer_letter(answer: str, labels) -> tuple[str, tuple[int, int]] | None:
    m = _ANSWER.match(answer)
    if not m:
        return None
    letter = m.group("letter")
    if letter not in labels:
        return None
    if m.group("pre") is None and letter != letter.upper():
        return None
    return letter, m.span("letter")


def find_mc_rounds(turns: list[Turn]) -> list[MCRound]:
    """Every user->assistant round that is multiple-choice (see the module doc)."""
    rounds = []
    for i in range(len(turns) - 1):
        if turns[i].role != "user" or turns[i + 1].role != "assistant":
            continue
        options = parse_options(turns[i].text)
        if not options:
            continue
        parsed = parse_answer_letter(turns[i + 1].text, {o.label for o in options})
        if parsed is None:
            continue
        rounds.append(MCRound(i, i + 1, options, parsed[0], parsed[1]))
    return rounds


def is_multiple_choice(turns: list[Turn]) -> bool:
    return bool(find_mc_rounds(turns))


def _rewrite(turns: list[Turn], rnd: MCRound, new_texts: list[str], label_of: dict[str, str],
             labels: list[str]) -> list[Turn]:
    q_lines = turns[rnd.user].text.split("\n")
    for opt, lab, text in zip(rnd.options, labels, new_texts):
        q_lines[opt.line] = opt.render(lab, text)
    a = turns[rnd.assistant].text
    s, e = rnd.answer_span
    new_answer = a[:s] + label_of[rnd.answer] + a[e:]
    out = list(turns)
    out[rnd.user] = Turn(turns[rnd.user].role, "\n".join(q_lines))
    out[rnd.assistant] = Turn(turns[rnd.assistant].role, new_answer)
    return out


def symbol_attack(turns: list[Turn], symbols: str = ATTACK_SYMBOLS) -> list[Turn] | None:
    """Option letters -> ``symbols`` (A->Q, B->W, ...), answer remapped. None when no round is MC.

    An answer that repeats the option text after the letter keeps it; only the letter changes.
    """
    rounds = find_mc_rounds(turns)
    if not rounds:
        return None
    out = list(turns)
    for rnd in rounds:
        if len(rnd.options) > len(symbols):
            return None
        labels = [symbols[i] for i in range(len(rnd.options))]
        mapping = {o.label: lab for o, lab in zip(rnd.options, labels)}
        out = _rewrite(out, rnd, [o.text for o in rnd.options], mapping, labels)
    return out


def stable_seed(*parts) -> int:
    """A seed from strings/ints that is the same in every process (Python's hash() is salted per process)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def permutation_attack(turns: list[Turn], *, seed: int = 0, key: str = "") -> list[Turn] | None:
    """Options reordered by a permutation seeded by (seed, key, round); the answer letter follows its option."""
    rounds = find_mc_rounds(turns)
    if not rounds:
        return None
    out = list(turns)
    for r, rnd in enumerate(rounds):
        n = len(rnd.options)
        perm = np.random.default_rng(stable_seed(seed, key, r)).permutation(n)
        if np.array_equal(perm, np.arange(n)):
            perm = np.roll(perm, 1)
        # New position p holds old option perm[p].
        labels = [o.label for o in rnd.options]
        new_texts = [rnd.options[perm[p]].text for p in range(n)]
        new_label_of_old = {labels[perm[p]]: labels[p] for p in range(n)}
        out = _rewrite(out, rnd, new_texts, new_label_of_old, labels)
    return out


# ---- image noise ----------------------------------------------------------------------------------------------
def sigmoid_betas(n_steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> np.ndarray:
    """Sigmoid beta schedule: beta_t = sigmoid(linspace(-6, 6, T)) * (end - start) + start."""
    x = np.linspace(-6.0, 6.0, n_steps)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def alpha_bar(step: int = 300, n_steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> float:
    """Cumulative signal fraction abar_t = prod_{s<=t} (1 - beta_s) at ``step`` (0-based, as in ARDS's code)."""
    betas = sigmoid_betas(n_steps, beta_start, beta_end)
    return float(np.prod(1.0 - betas[: step + 1]))


def diffusion_noise(x, *, generator, step: int = 300, n_steps: int = 1000):
    """x_t = sqrt(abar) x + sqrt(1 - abar) eps for a torch tensor ``x``; eps from ``generator`` (CPU)."""
    import torch

    ab = alpha_bar(step, n_steps)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return math.sqrt(ab) * x + math.sqrt(1.0 - ab) * eps


def noise_image(image, *, generator, step: int = 300, n_steps: int = 1000):
    """A PIL RGB image with :func:`diffusion_noise` added to its pixels in [0, 1], clipped to [0, 1] and
    truncated back to 8 bits (as a byte conversion does), for the processor to resize afterwards."""
    import torch
    from PIL import Image

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    y = diffusion_noise(x, generator=generator, step=step, n_steps=n_steps).clamp(0.0, 1.0)
    return Image.fromarray((y * 255.0).to(torch.uint8).numpy(), mode="RGB")
