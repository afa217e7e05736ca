"""The contract layer: what several pipeline stages must agree on, decided once.

Each module pins one shared fact so that the stage writing it and the stages
reading it import the same rule instead of re-deriving it:

- `names`: labels, annotations, namespaces and Consul names (docs/CONTRACTS.md §2);
- `scheduling`: may a pod go on a node (Kubernetes semantics), and a kind config's nodes;
- `upstreams`: the `connect-service-upstreams` annotation, parsed;
- `clusters`: the Envoy cluster names Consul gives a caller's upstream chain (and Go durations, read once);
- `logsource`: how access-log lines pass from a backend to observe;
- `rundir`: run-directory paths and record file names (docs/CONTRACTS.md §4);
- `inventory`: pod <-> IP <-> node <-> zone over time, with the one IP-at-time resolver;
- `hostcpu`: the host's CPU busy share (`host.jsonl`, and the probe budget that holds it down);
- `clock`: the nodes' clocks against the runner's (`clock.jsonl`): the offsets hops are corrected by.

It sits below every stage: it imports `harness.topology` and `harness.errors`
only, so render, backends, observe, verify and report can all depend on it.
"""
