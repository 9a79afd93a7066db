"""``audit report``: the filed document of an audit (HTML + versioned JSON) and the auditor's
signed attestation over it."""

from __future__ import annotations

from audit.report._build import REPORT_TYPE, ReportOptions, ReportResult, build_report
from audit.report._html import render_html

__all__ = ["REPORT_TYPE", "ReportOptions", "ReportResult", "build_report", "render_html"]
