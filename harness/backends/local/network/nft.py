"""The hub's nftables table: the LZ <-> LZ drop, partitions, service-link loss, relay redirects.

Partition / heal and service-link loss are rules in prerouting (before NAT,
so they see the real destination) and postrouting (after NAT undo, so
relayed replies carry the real source); traffic the hub itself originates
(health checks, user entry) is never affected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from harness.backends.local.network import netns as nsutil
from harness.backends.local.network.addresses import NetBase


class NftRules(NetBase):
    """Writes and reads the hub's nftables table."""

    def counters(self) -> dict[str, int]:
        """Packets dropped by the hub's rules, by kind: `lz-lz`, `partition`, `loss`.

        `partition` and `loss` restart from 0 whenever partitions or links change.
        """
        out = nsutil.run(nsutil.exec_argv(self.hub, ["nft", "-j", "list", "table", "inet", self.table]))
        totals = {"lz-lz": 0, "partition": 0, "loss": 0}
        for item in json.loads(out).get("nftables", []):
            rule = item.get("rule")
            if not rule or rule.get("comment") not in totals:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    totals[rule["comment"]] += int(expr["counter"]["packets"])
        return totals

    # -- nftables -------------------------------------------------------------
    def _base_ruleset(self) -> str:
        t = self.table
        lines = [f"table inet {t} {{"]
        for c in ("partition_in", "partition_out", "loss_in", "loss_out"):
            lines.append(f"  chain {c} {{\n  }}")
        lines.append(
            "  chain guard_pre {\n    type filter hook prerouting priority -150; policy accept;\n"
            "    jump partition_in\n    jump loss_in\n  }"
        )
        lines.append(
            "  chain guard_post {\n    type filter hook postrouting priority 150; policy accept;\n"
            "    jump partition_out\n    jump loss_out\n  }"
        )
        fwd = ["  chain forward {", "    type filter hook forward priority 0; policy accept;"]
        for a in self._edges:
            for b in self._edges:
                if a is not b:
                    fwd.append(f'    iifname "{a.bridge}" oifname "{b.bridge}" counter drop comment "lz-lz"')
        fwd.append("  }")
        lines.append("\n".join(fwd))
        nat = ["  chain nat_pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
        if self.link_mode == "relay" and self._region:
            region_nets = _set(str(r.subnet) for r in self._region)
            region_brs = _set(f'"{r.bridge}"' for r in self._region)
            for z in self._edges:
                to = f"meta l4proto tcp redirect to :{z.relay_port}"
                nat.append(f'    iifname "{z.bridge}" ip daddr {region_nets} {to}')
                nat.append(f"    iifname {region_brs} ip daddr {z.subnet} {to}")
        nat.append("  }")
        lines.append("\n".join(nat))
        # registers the NAT undo on the way out, so postrouting rules see real addresses
        lines.append("  chain nat_post {\n    type nat hook postrouting priority srcnat; policy accept;\n  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _apply_dynamic(self) -> None:
        """Rewrite the partition and loss chains in one nft transaction."""
        t = self.table
        cmds = [f"flush chain inet {t} {c}" for c in ("partition_in", "partition_out", "loss_in", "loss_out")]
        for name in sorted(self._partitioned):
            z = self._zones[name]
            others = [o for o in self._zones.values() if o is not z]
            drop = 'counter drop comment "partition"'
            own = f"{{ {z.subnet}, {self.users_net} }}"  # the zone itself and its users
            cmds.append(f'add rule inet {t} partition_in iifname "{z.bridge}" ip daddr != {own} {drop}')
            cmds.append(f'add rule inet {t} partition_out oifname "{z.bridge}" ip saddr != {own} {drop}')
            if others:
                brs = _set(f'"{o.bridge}"' for o in others)
                cmds.append(f"add rule inet {t} partition_in iifname {brs} ip daddr {z.subnet} {drop}")
                cmds.append(f"add rule inet {t} partition_out oifname {brs} ip saddr {z.subnet} {drop}")
        region = self._region
        if region:
            nets = _set(str(r.subnet) for r in region)
            brs = _set(f'"{r.bridge}"' for r in region)
            for z in self._edges:
                n = round(z.link.loss_percent * 100)
                if n <= 0:
                    continue
                rnd = "" if n >= 10000 else f"numgen random mod 10000 < {n} "
                drop = f'{rnd}counter drop comment "loss"'
                # each direction of the link loses packets once: on entering the hub before NAT,
                # and (relay mode only: `ct status dnat`) the relayed replies on leaving it
                cmds.append(f'add rule inet {t} loss_in iifname "{z.bridge}" ip daddr {nets} {drop}')
                cmds.append(f"add rule inet {t} loss_in iifname {brs} ip daddr {z.subnet} {drop}")
                cmds.append(f'add rule inet {t} loss_out oifname "{z.bridge}" ip saddr {nets} ct status dnat {drop}')
                cmds.append(f"add rule inet {t} loss_out oifname {brs} ip saddr {z.subnet} ct status dnat {drop}")
        nsutil.run(nsutil.exec_argv(self.hub, ["nft", "-f", "-"]), input="\n".join(cmds) + "\n")


def _set(items: Iterable[str]) -> str:
    """An nft value or anonymous set (a one-element set is written as the value)."""
    values = list(items)
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"
