"""The verify tool: check detops' ops, or anyone's implementation of the course's functions,
against the NumPy references (``python -m detops verify``).

* :mod:`detops.verify.harness`: loading targets, running functions under guard (a forked
  worker per function, killed on a hang), the search, the verdicts (PASS / DEPARTS /
  FAIL), progress and the reports.
* :mod:`detops.verify.course_api`: the course code's per-image signatures (adapters onto
  the registry's entries), the shared-contract domains and the error models.
* :mod:`detops.verify.probes`: the hand-made probes and the known mistakes (mistake
  references: the NumPy reference with one mistake made on purpose).
"""

from .harness import (
    DEFAULT_EXAMPLES,
    DEFAULT_TIMEOUT,
    Failure,
    FunctionReport,
    Progress,
    Target,
    TargetError,
    VerifyReport,
    format_report,
    load_target,
    progress_line,
    report_to_dict,
    report_to_json,
    stderr_progress,
    verify,
)

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_TIMEOUT",
    "Failure",
    "FunctionReport",
    "Progress",
    "Target",
    "TargetError",
    "VerifyReport",
    "format_report",
    "load_target",
    "progress_line",
    "report_to_dict",
    "report_to_json",
    "stderr_progress",
    "verify",
]
