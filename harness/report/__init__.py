"""Human- and CI-facing outputs of a verdict: the HTML report and JUnit XML.

Like the verifier, this package reads a run directory only (it imports
`harness.verify` and `harness.topology`, never a backend), so a run copied off
another machine can be reported on.

- `write_report(run_dir, verdict=None) -> Path` (run_dir/report.html)
- `write_junit(run_dir, verdict=None) -> Path` (run_dir/junit.xml)
"""

from harness.report.html import render_html, write_report
from harness.report.junit import junit_xml, write_junit

__all__ = ["junit_xml", "render_html", "write_junit", "write_report"]
