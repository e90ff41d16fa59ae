"""Telling bad records from a broken setup: per-record failures are counted, systematic ones stop the run.

A record that fails (an image that does not decode, a conversation too long for the model) is reported and
skipped. But when most records fail, the cause is almost never the data: it is a library version the probe was
not tested with, or model files that do not fit together. Then carrying on would print one warning per record and
end with an empty result, so :class:`FailureGuard` stops the run instead: once ``early_records`` records have
been tried (and again at the end), if more than ``max_failure_rate`` of them failed it raises
:class:`SystematicFailure` naming the most common error, the likely cause, and a log file holding that error's
full traceback.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ERROR_LOG = "errors.log"
DEFAULT_MAX_FAILURE_RATE = 0.5


class SystematicFailure(RuntimeError):
    """Most records failed in the same way: a broken install or model, not bad data."""

    def __init__(self, message: str, log_path: Path | None = None):
        super().__init__(message)
        self.log_path = log_path


def check_max_failure_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--max-failures must be a fraction of records between 0 and 1, got {rate}")
    return rate


def traceback_text(error: BaseException) -> str:
    """The full traceback of ``error`` as text (text crosses process boundaries, e.g. from DataLoader workers)."""
    return "".join(traceback.format_exception(error))


def _signature(message: str) -> str:
    """The error with numbers and quoted names blanked, so the same fault on different records counts once."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", message)[:200]


def likely_cause() -> str:
    """A sentence naming the installed versions, and whether transformers is outside the tested window."""
    from mmsift.compat import version_report, window_problem

    problem = window_problem("transformers")
    if problem:
        return problem
    return (f"the model's files (config, processor, weights) or the installed libraries ({version_report()}); "
            "all of these are inside the window mmsift is tested with, so check the model first")


@dataclass
class FailureGuard:
    """Counts tried and failed records of one stage (``probe``, ``warmup``, ``judge``) and stops systematic runs.

    ``log_dir`` receives ``errors.log`` with the traceback of the first record of the most common error.
    """

    stage: str
    log_dir: Path | None = None
    unit: str = "records"  # what is counted, for messages
    cause: str | None = None  # the likely cause when it is known better than "the install or the model"
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    early_records: int = 32
    tried: int = 0
    by_signature: Counter = field(default_factory=Counter)
    first: dict = field(default_factory=dict)  # signature -> (record id, message, traceback text or None)

    @property
    def n_failed(self) -> int:
        return sum(self.by_signature.values())

    def ok(self, n: int = 1) -> None:
        self.tried += n

    def failed(self, record_id, message: str, error: BaseException | None = None, tb: str | None = None) -> None:
        """Count one failed record; ``error`` or the traceback text ``tb`` goes to the log if it is the first."""
        self.tried += 1
        sig = _signature(message)
        self.by_signature[sig] += 1
        if sig not in self.first:
            if tb is None and error is not None:
                tb = traceback_text(error)
            self.first[sig] = (str(record_id), message, tb)

    def check(self, *, final: bool = False) -> None:
        """Raise :class:`SystematicFailure` when more than the allowed share of the records tried so far failed
        (judged once ``early_records`` were tried, and at the end whatever their number)."""
        if not self.tried or (not final and self.tried < self.early_records):
            return
        if self.n_failed / self.tried <= self.max_failure_rate and not (final and self.n_failed == self.tried):
            return
        sig, count = self.by_signature.most_common(1)[0]
        record_id, message, tb = self.first[sig]
        log_path = self._write_log(record_id, message, tb)
        where = f"; full traceback in {log_path}" if log_path else ""
        accept = ""
        if self.n_failed < self.tried:
            rate = min(1.0, round(self.n_failed / self.tried + 0.05, 2))
            accept = f" If these {self.unit} really are bad, --max-failures {rate} accepts this many failures."
        raise SystematicFailure(
            f"{self.stage} stopped: {self.n_failed} of the {self.tried} {self.unit} tried so far failed, "
            f"{count} of them with the same error (first on record {record_id}): {message}{where}. "
            f"This looks like a broken setup, not bad data. Likely cause: {self.cause or likely_cause()}.{accept}",
            log_path)

    def _write_log(self, record_id, message, tb) -> Path | None:
        head = [f"{self.stage}: {self.n_failed} of {self.tried} {self.unit} failed", "",
                "errors by kind (count, error with numbers and names blanked):"]
        head += [f"  {n:6d}  {s}" for s, n in self.by_signature.most_common()]
        head += ["", f"first record with the most common error: {record_id}", message]
        return write_error_log(self.log_dir, head, tb)


def write_error_log(log_dir, head: list[str], tb: str | None) -> Path | None:
    """``log_dir/errors.log`` with the versions, ``head`` lines and a traceback; None when it cannot be written."""
    from mmsift.compat import version_report

    if log_dir is None:
        return None
    path = Path(log_dir) / ERROR_LOG
    lines = [f"versions: {version_report()}", *head, "", tb or "(no traceback)"]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as e:
        log.warning("could not write %s: %s", path, e)
        return None
    return path


def step_failure(stage: str, what: str, error: BaseException, log_dir) -> SystematicFailure:
    """A :class:`SystematicFailure` for an error that hits a whole step (a training batch), not one record."""
    message = f"{type(error).__name__}: {error}"
    log_path = write_error_log(log_dir, [f"{stage}: {what} failed", message],
                               traceback_text(error))
    where = f"; full traceback in {log_path}" if log_path else ""
    return SystematicFailure(f"{stage} stopped: {what} failed: {message}{where}. Likely cause: {likely_cause()}.",
                             log_path)
