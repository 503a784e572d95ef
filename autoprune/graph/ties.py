"""Channels that must go together beyond torch-pruning's groups, and units whose cost is affine.

torch-pruning couples channels that share a tensor; three layers also couple channels *across*
positions, and slimming stays exact only if the same positions go from every group:

* a grouped convolution whose groups are wider than one channel holds one weight slice per
  position within a group, shared by all groups: input (and output) channel `p + j * width` go
  together for every group j, so `groups` stays valid and no group sees another's channels;
* a channel shuffle (view -> transpose -> reshape) interleaves its groups: the same positions
  must go from each, or the slimmed shuffle sends channels elsewhere; likewise a chunk splits
  whatever it gets into equal parts, so every part must lose as many channels;
* GroupNorm normalises over each group: only whole groups can go, or the statistics change.

These ties join (group, channel) pairs with union-find. A tied class may then mix channels of
several torch-pruning groups, and one group's channels may differ in what they feed (a `chunk`
sends half of them one way): a unit is therefore a set of classes with the same footprint (the
same number of slices in every module), so every layer width is affine in the unit's keep and
the cost model stays exact.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from autoprune.graph.units import Member, Unit


@dataclass(frozen=True)
class RawUnit:
    """One torch-pruning group: its root layer, channel count and module slices."""

    root: str
    size: int
    members: tuple[Member, ...]


# (space, class, raw unit, root channel): channels with the same space and class go together
Tie = tuple[Hashable, Hashable, int, int]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def tied_units(raw: Sequence[RawUnit], ties: Sequence[Tie]) -> list[Unit]:
    """Units over `raw` groups joined by `ties`, split so that each has one footprint."""
    offset = [0]
    for r in raw:
        offset.append(offset[-1] + r.size)
    nodes = _UnionFind(offset[-1])
    first: dict[tuple[Hashable, Hashable], int] = {}
    for space, cls, u, root in ties:
        node = offset[u] + root
        nodes.union(first.setdefault((space, cls), node), node)
    classes: dict[int, list[tuple[int, int]]] = defaultdict(list)  # class -> (raw unit, channel)
    for u, r in enumerate(raw):
        for root in range(r.size):
            classes[nodes.find(offset[u] + root)].append((u, root))
    groups = _UnionFind(len(raw))  # raw groups that share a class are one unit (or several)
    for members in classes.values():
        for u, _ in members[1:]:
            groups.union(members[0][0], u)
    footprint = [_footprints(r) for r in raw]
    buckets: dict[tuple[int, tuple], list[list[tuple[int, int]]]] = defaultdict(list)
    for members in classes.values():  # in order of their first channel: deterministic
        total: Counter[tuple[str, str]] = Counter()
        for u, root in members:
            total.update(footprint[u][root])
        buckets[(groups.find(members[0][0]), tuple(sorted(total.items())))].append(members)
    units: list[Unit] = []
    names: Counter[str] = Counter()
    for bucket in buckets.values():
        name = raw[bucket[0][0][0]].root
        names[name] += 1
        label = name if names[name] == 1 else f"{name}/{names[name]}"
        units.append(_unit(label, raw, bucket))
    return units


def _footprints(r: RawUnit) -> list[Counter[tuple[str, str]]]:
    """Per root channel of a raw group: how many slices it owns in each (module, dim)."""
    out: list[Counter[tuple[str, str]]] = [Counter() for _ in range(r.size)]
    for m in r.members:
        for root in m.root_idxs:
            out[root][(m.module, m.dim)] += 1
    return out


def _unit(name: str, raw: Sequence[RawUnit], classes: list[list[tuple[int, int]]]) -> Unit:
    element = {node: e for e, members in enumerate(classes) for node in members}
    pieces: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for u in sorted({u for members in classes for u, _ in members}):
        for m in raw[u].members:
            for idx, root in zip(m.idxs, m.root_idxs, strict=True):
                if (u, root) in element:
                    pieces[(m.module, m.dim)].append((idx, element[(u, root)]))
    members = []
    for (module, dim), pairs in pieces.items():
        pairs.sort()
        members.append(
            Member(module, dim, tuple(i for i, _ in pairs), tuple(e for _, e in pairs))  # type: ignore[arg-type]
        )
    return Unit(name, "channel", len(classes), tuple(members))
