"""The routing config (``serving/routing.yaml``) and sticky A/B assignment, as pure functions: the
service routes with them, and the operator commands (components/promote.py) rewrite the file.

```yaml
default: recall-sasrec:v3
experiments:
  - name: sasrec-v4
    salt: 7f3a
    traffic: 100          # optional: percent of users enrolled (default 100)
    variants:
      - {name: control,   model: recall-sasrec:v3, weight: 90}
      - {name: treatment, model: recall-sasrec:v4, weight: 10}
```

A user's place is ``sha256(salt:user_id)`` mapped to one of 10,000 buckets: the same user always lands
in the same variant, and different salts give independent splits. Experiments are tried in order; the
first that enrols the user decides; everyone else gets ``default``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BUCKETS = 10_000


class RoutingError(ValueError):
    """The routing config is malformed; the message says where."""


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    variants: tuple[Variant, ...]
    traffic: float = 100.0


@dataclass(frozen=True)
class Routing:
    default: str
    experiments: tuple[Experiment, ...] = ()

    def models(self) -> list[str]:
        """Every model version the config can route to (default first, no duplicates)."""
        seen = [self.default]
        for e in self.experiments:
            seen += [v.model for v in e.variants if v.model not in seen]
        return list(dict.fromkeys(seen))


@dataclass(frozen=True)
class Assignment:
    model: str
    experiment: str | None
    variant: str


def bucket(salt: str, user_id: str, buckets: int = BUCKETS) -> int:
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def assign(routing: Routing, user_id: str) -> Assignment:
    """The sticky assignment of ``user_id`` (see the module docstring)."""
    uid = str(user_id)
    for exp in routing.experiments:
        if exp.traffic < 100 and bucket(f"{exp.salt}:enrol", uid) >= exp.traffic / 100 * BUCKETS:
            continue
        b = bucket(exp.salt, uid) / BUCKETS * sum(v.weight for v in exp.variants)
        acc = 0.0
        for v in exp.variants:
            acc += v.weight
            if b < acc:
                return Assignment(v.model, exp.name, v.name)
        last = exp.variants[-1]
        return Assignment(last.model, exp.name, last.name)
    return Assignment(routing.default, None, "default")


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # experiment and variant names: they name report files


def check_name(name: str, what: str) -> str:
    """``name`` if it is a safe experiment/variant name (letters, digits, ``_``, ``-``; ≤ 64), else RoutingError."""
    if not NAME.fullmatch(name):
        raise RoutingError(f"{what} {name!r} must be letters, digits, '_' or '-' (at most 64, starting alphanumeric)")
    return name


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise RoutingError(f"{where}: missing {key!r}")
    return d[key]


def parse(data: Any) -> Routing:
    """Validates a routing document (already YAML-parsed)."""
    if not isinstance(data, dict):
        raise RoutingError("routing config must be a mapping with 'default' and optional 'experiments'")
    unknown = set(data) - {"default", "experiments"}
    if unknown:
        raise RoutingError(f"unknown keys {sorted(unknown)}; expected 'default' and 'experiments'")
    default = str(_require(data, "default", "routing"))
    experiments = []
    names = set()
    for i, e in enumerate(data.get("experiments") or []):
        where = f"experiments[{i}]"
        if not isinstance(e, dict):
            raise RoutingError(f"{where} must be a mapping")
        name = check_name(str(_require(e, "name", where)), f"{where}: experiment name")
        if name in names:
            raise RoutingError(f"{where}: duplicate experiment name {name!r}")
        names.add(name)
        variants = []
        for j, v in enumerate(_require(e, "variants", where)):
            w = f"{where}.variants[{j}]"
            if not isinstance(v, dict):
                raise RoutingError(f"{w} must be a mapping with name, model, weight")
            weight = v.get("weight")
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                raise RoutingError(f"{w}: weight must be a number ≥ 0, got {weight!r}")
            vname = check_name(str(_require(v, "name", w)), f"{w}: variant name")
            variants.append(Variant(vname, str(_require(v, "model", w)), float(weight)))
        if not variants or sum(v.weight for v in variants) <= 0:
            raise RoutingError(f"{where}: needs at least one variant with a positive weight")
        if len({v.name for v in variants}) != len(variants):
            raise RoutingError(f"{where}: variant names must be unique")
        traffic = e.get("traffic", 100)
        if not isinstance(traffic, int | float) or not 0 <= traffic <= 100:
            raise RoutingError(f"{where}: traffic must be a percentage 0..100, got {traffic!r}")
        experiments.append(Experiment(name, str(_require(e, "salt", where)), tuple(variants), float(traffic)))
    return Routing(default, tuple(experiments))


def rename(routing: Routing, names: dict[str, str]) -> Routing:
    """The same routing with model references replaced by ``names`` (e.g. each spelling → its canonical
    tag); references not in ``names`` stay as they are."""
    experiments = tuple(
        Experiment(e.name, e.salt, tuple(Variant(v.name, names.get(v.model, v.model), v.weight) for v in e.variants),
                   e.traffic)  # fmt: skip
        for e in routing.experiments
    )
    return Routing(names.get(routing.default, routing.default), experiments)


def generation(routing: Routing) -> str:
    """A short digest of the routing: every worker serving the same routing reports the same one. The
    salts are left out (it is shown on the open /readyz, and a salt predicts assignment)."""
    doc = to_dict(routing)
    for e in doc["experiments"]:
        e.pop("salt")
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def load(path: str | Path) -> Routing:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise RoutingError(f"routing file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise RoutingError(f"{p}: not valid YAML ({e})") from None
    return parse(data)


def to_dict(routing: Routing) -> dict[str, Any]:
    return {
        "default": routing.default,
        "experiments": [
            {
                "name": e.name,
                "salt": e.salt,
                **({"traffic": e.traffic} if e.traffic != 100 else {}),
                "variants": [{"name": v.name, "model": v.model, "weight": v.weight} for v in e.variants],
            }
            for e in routing.experiments
        ],
    }
