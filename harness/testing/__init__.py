"""A test kit for users' own tests: the harness's pipeline without a cluster.

As httpx ships `MockTransport` and kopf its testing kit, this module ships a
backend that lives in memory, so code written against the backend protocol
(an extension's chaos action, a custom collector, a CI check of the verifier's
configuration) can be tested in milliseconds, with no root, no Docker, no
Kubernetes::

    from harness.testing import FakeBackend, ManualClock
    from harness.verify import verify

    fake = FakeBackend("topology.yaml", clock=ManualClock())   # up at once
    fake.traffic(seconds=5)                                    # every zone, every 50 ms
    fake.set_pod_unready("us-west-2-lax-1a", "product-api")    # a fault window opens (chaos.jsonl)
    fake.traffic(seconds=5)                                    # lax's calls fail over to the Region
    fake.set_pod_ready("us-west-2-lax-1a", "product-api")      # ... and it closes
    fake.traffic(seconds=5)
    verdict = verify(fake.write_run(tmp_path / "run"))
    assert verdict.invariant("locality").passed and verdict.invariant("fallback").passed

`FakeBackend` implements `harness.backends.base.Backend` (lifecycle,
inventory, log sources, chaos primitives); routing follows Consul CE's
locality-aware failover (in-zone, else the Region, never another Local Zone);
its chaos primitives also write the timeline the chaos actions would, so the
verifier judges fault windows. It has no Envoy admin API and no Consul API:
those calls raise `BackendError`, as a backend that cannot answer them does,
and a verdict over `write_run` says the evidence they give (upstream counters,
preflight, plan) is missing. In pytest, the plugin's `eh_fake` fixture is one
on a `ManualClock`. See `harness.testing.fake` for what is modelled.
"""

from harness.testing.fake import FakeBackend, FakeRequest, ManualClock, MemoryLogSource

__all__ = ["FakeBackend", "FakeRequest", "ManualClock", "MemoryLogSource"]
