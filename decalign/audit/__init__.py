"""Audit trail of predictions and human reviews."""

from decalign.audit.store import (
    MAX_COMMENT_CHARS,
    SOURCES,
    VERDICTS,
    AuditError,
    AuditTrail,
    default_audit_path,
)

__all__ = [
    "MAX_COMMENT_CHARS", "SOURCES", "VERDICTS", "AuditError", "AuditTrail", "batch_drift", "build_report",
    "compute_flags", "default_audit_path", "dominant_branch", "explain_rows", "flag_columns", "make_report",
    "prediction_table", "slice_metrics", "write_report",
]

# The analytics (and their torch / plotly imports) load on first use, so code that only needs the
# audit trail stays light.
_LAZY = {
    "batch_drift": "drift", "compute_flags": "flags", "flag_columns": "flags", "build_report": "report",
    "explain_rows": "report", "make_report": "report", "write_report": "report", "dominant_branch": "slices",
    "prediction_table": "slices", "slice_metrics": "slices",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"decalign.audit.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'decalign.audit' has no attribute {name!r}")
