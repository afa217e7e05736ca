"""The EKS workflows on a self-hosted runner (e51c): what such a runner must have, said where EH_RUNNER is set.

A Wavelength Zone takes no connection from the internet, and a zone far from GitHub's runners cannot have its clock
bounded, so the README sends the nightly to a self-hosted runner in the cluster's VPC (`EH_RUNNER`), most likely an
EC2 instance. Two things GitHub's Ubuntu images have and such an instance may not:

- kubectl: the existing backend refuses to start without it (`ExistingBackend.check_tools`: port-forwards to Consul
  and to every sidecar's Envoy admin); the workflows install helm only.
- an Ubuntu the first step can put Python 3.11 on: actions/setup-python downloads its Pythons from
  actions/python-versions, built for GitHub's images only (Ubuntu; actions/setup-python#716: "supported on recent
  Ubuntu versions only, and it fails on other linux distributions"), so on Amazon Linux, EC2's default, the job
  failed at its second step unless the runner's tool cache already held a 3.11.
"""

from __future__ import annotations

import re

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def _runner_note(text: str) -> str:
    """The header's paragraph on EH_RUNNER (from its name to the next variable or secret)."""
    header = text.split("\nname:", 1)[0]
    m = re.search(r"#\s+EH_RUNNER\b(.*?)(?=\n#\s+EH_[A-Z_]+\s|\n# and \(Secrets\)|\Z)", header, re.S)
    assert m, "nightly-eks.yml's header describes EH_RUNNER"
    return " ".join(m.group(1).replace("#", " ").split())


def test_the_self_hosted_runner_note_names_kubectl_and_an_ubuntu_for_setup_python() -> None:
    """Reproducer: the note listed the AWS CLI and make only, so a runner prepared from it had no kubectl (up
    refused) or ran an OS setup-python cannot serve (the job failed before the harness ran)."""
    note = _runner_note((WORKFLOWS / "nightly-eks.yml").read_text())
    assert "kubectl" in note, note
    assert "Ubuntu" in note and "setup-python" in note, note
    readme = (REPO / "README.md").read_text()
    wavelength = readme[readme.index("So its entry URL must be one the harness reaches") :][:1200]
    assert "kubectl" in wavelength and "Ubuntu" in wavelength, wavelength


def test_control_the_note_is_read_from_the_header_alone() -> None:
    """Control: the paragraph is the header's EH_RUNNER entry, not the rest of the file (which names kubectl nowhere
    but could name setup-python)."""
    text = (
        "# Repository settings\n#   EH_RUNNER   a label; needs make\n#   EH_TOPOLOGY  kubectl\nname: x\n"
        "# kubectl Ubuntu\n"
    )
    assert _runner_note(text) == "a label; needs make"
