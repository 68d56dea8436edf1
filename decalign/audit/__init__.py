"""Audit: the append-only trail of predictions and reviews (``store``), per-sample flags (``flags``), drift
against held-out data (``drift``), the prediction table (``table``), trail rows (``rows``), the whole audit
of a split as one result (``run``: ``decalign audit``, the Audit page and the report) and the HTML report
(``report``).

The package exports the trail only, so code that just records predictions stays light; import the
analytics from their modules (``from decalign.audit.flags import compute_flags``).
"""

from .store import MAX_COMMENT_CHARS, SOURCES, VERDICTS, AuditError, AuditTrail, default_audit_path

__all__ = ["MAX_COMMENT_CHARS", "SOURCES", "VERDICTS", "AuditError", "AuditTrail", "default_audit_path"]
