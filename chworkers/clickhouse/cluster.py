"""A sharded ClickHouse cluster as chworkers sees it: :class:`Cluster` of :class:`Shard`.

Each shard is a list of replicas (the replicas of one shard hold the same data and fail
over as a pool's hosts do, :mod:`chworkers.clickhouse.hosts`) and a weight, as ClickHouse's
``remote_servers`` describes a cluster: a row goes to a shard in proportion to its weight
(:mod:`chworkers.clickhouse.sharding` routes rows exactly as a ``Distributed`` table does).

A cluster is written as a list of shards, each a list of replica URLs::

    [["http://a1:8123", "http://a2:8123"], ["http://b1:8123"]]

or with weights, as ``remote_servers`` has them::

    [{"weight": 2, "replicas": ["http://a1:8123", "http://a2:8123"]},
     {"weight": 1, "replicas": ["http://b1:8123"]}]

User, password, database and the other connection options are the connection's and apply
to every shard: a replica names only its scheme, host and port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chworkers.clickhouse.hostaddr import Host, parse_host
from chworkers.errors import ConfigError
from chworkers.settings import redact_url

__all__ = ["Cluster", "Shard"]

_SECURE = {"http": False, "clickhouse": False, "https": True, "clickhouses": True}
_SHAPE = (
    'a list of shards, each a list of replica URLs ([["http://a1:8123", "http://a2:8123"], '
    '["http://b1:8123"]]) or a mapping {"replicas": [...], "weight": N}'
)


def _fail(where: str, value: object, expected: str, why: str = "") -> ConfigError:
    return ConfigError(
        f"shards{where}: {value!r} is not {expected}{why}",
        key=f"shards{where}",
        value=value,
        expected=expected,
    )


@dataclass(frozen=True)
class Shard:
    """One shard: its replicas (tried in turn, as a pool's hosts) and its weight."""

    replicas: tuple[Host, ...]
    weight: int = 1

    def __post_init__(self) -> None:
        replicas = tuple(self.replicas)
        if not replicas or not all(isinstance(r, Host) for r in replicas):
            raise _fail("", self.replicas, "a non-empty tuple of Host")
        if len(set(replicas)) != len(replicas):
            raise _fail("", [str(r) for r in replicas], "a list of distinct replicas")
        _check_weight("", self.weight)
        object.__setattr__(self, "replicas", replicas)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.replicas)


@dataclass(frozen=True)
class Cluster:
    """The shards of a cluster, in order (the order decides which rows go where).

    ``secure`` is what the replicas' URLs say (``https``: ``True``, ``http``: ``False``)
    or ``None`` when they name no scheme (the connection's ``secure`` decides).
    """

    shards: tuple[Shard, ...]
    secure: bool | None = None

    def __post_init__(self) -> None:
        shards = tuple(self.shards)
        if not shards or not all(isinstance(s, Shard) for s in shards):
            raise _fail("", self.shards, "a non-empty tuple of Shard")
        seen: dict[Host, int] = {}
        for index, shard in enumerate(shards):
            for replica in shard.replicas:
                if replica in seen:
                    raise _fail(
                        f"[{index}]",
                        str(replica),
                        "a replica of one shard only",
                        f" (it is also a replica of shard {seen[replica]})",
                    )
                seen[replica] = index
        object.__setattr__(self, "shards", shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __str__(self) -> str:
        return " | ".join(
            f"{s}" + (f" (weight {s.weight})" if s.weight != 1 else "") for s in self.shards
        )

    @property
    def total_weight(self) -> int:
        return sum(s.weight for s in self.shards)

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(s.weight for s in self.shards)

    @classmethod
    def parse(
        cls,
        value: Cluster | Sequence[object] | Mapping[str, object],
        weights: Sequence[int] | None = None,
    ) -> Cluster:
        """A cluster from its description (see the module's docstring).

        ``weights``, when given, are the shards' weights in order (one per shard); a shard
        given as a mapping may carry its own ``weight`` instead, not both. A mapping
        ``{"shards": [...], "weights": [...]}`` is accepted too. Raises
        :class:`~chworkers.errors.ConfigError` saying which shard or replica is wrong.
        """
        if isinstance(value, Cluster):
            if weights is None:
                return value
            value = [{"replicas": list(s.replicas)} for s in value.shards]
        if isinstance(value, Mapping):
            unknown = set(value) - {"shards", "weights"}
            if unknown or "shards" not in value:
                raise _fail("", dict(value), _SHAPE, f" (unknown keys {sorted(unknown)})")
            if weights is not None and value.get("weights") is not None:
                raise _fail("", dict(value), _SHAPE, " (weights given twice)")
            given = value.get("weights")
            weights = weights if given is None else _weights_list(given)
            value = value["shards"]  # type: ignore[assignment]
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise _fail("", value, _SHAPE)
        if not value:
            raise _fail("", value, _SHAPE, " (no shards)")
        if weights is not None:
            weights = _weights_list(weights)
            if len(weights) != len(value):
                raise ConfigError(
                    f"shard weights: {list(weights)!r} gives {len(weights)} weight(s) for "
                    f"{len(value)} shard(s); give one weight per shard",
                    key="weights",
                    value=list(weights),
                    expected=f"{len(value)} weights",
                )
        schemes: dict[bool, str] = {}
        shards = []
        for index, item in enumerate(value):
            replicas, weight = _shard_parts(index, item)
            if weights is not None:
                if weight is not None:
                    raise _fail(f"[{index}]", item, "a shard", " (its weight is given twice)")
                weight = weights[index]
            hosts = []
            for r_index, replica in enumerate(replicas):
                host, secure = _replica(f"[{index}][{r_index}]", replica)
                if secure is not None:
                    schemes.setdefault(secure, f"shards[{index}][{r_index}]")
                hosts.append(host)
            if len(set(hosts)) != len(hosts):
                raise _fail(f"[{index}]", list(replicas), "a list of distinct replicas")
            _check_weight(f"[{index}]", weight if weight is not None else 1)
            shards.append(Shard(tuple(hosts), weight if weight is not None else 1))
        if len(schemes) > 1:
            raise ConfigError(
                f"shards: {schemes[True]} is https but {schemes[False]} is http; every "
                "replica must use the same scheme",
                key="shards",
                value=value,
                expected="replicas that all use http or all use https",
            )
        return cls(tuple(shards), next(iter(schemes), None))


def _weights_list(value: object) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(
            f"shard weights: {value!r} is not a list of positive integers",
            key="weights",
            value=value,
            expected="a list of positive integers, one per shard",
        )
    for i, w in enumerate(value):
        _check_weight(f"[{i}]", w, key="weights")
    return list(value)


def _check_weight(where: str, weight: object, key: str = "shards") -> None:
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ConfigError(
            f"{key}{where}: weight {weight!r} is not a positive integer (ClickHouse's "
            "remote_servers weights are 1 or more)",
            key=f"{key}{where}",
            value=weight,
            expected="a positive integer",
        )


def _shard_parts(index: int, item: object) -> tuple[Sequence[object], int | None]:
    if isinstance(item, str | Host):
        return [item], None
    if isinstance(item, Shard):
        return list(item.replicas), item.weight
    if isinstance(item, Mapping):
        unknown = set(item) - {"replicas", "weight"}
        if unknown or "replicas" not in item:
            raise _fail(
                f"[{index}]",
                dict(item),
                'a mapping {"replicas": [...], "weight": N}',
                f" (unknown keys {sorted(unknown)})" if unknown else " (no replicas)",
            )
        replicas = item["replicas"]
        if isinstance(replicas, str):
            replicas = [replicas]
        weight = item.get("weight")
        if weight is not None:
            _check_weight(f"[{index}]", weight)
    elif isinstance(item, Sequence) and not isinstance(item, bytes):
        replicas, weight = item, None
    else:
        raise _fail(f"[{index}]", item, "a list of replica URLs")
    if isinstance(replicas, bytes) or not isinstance(replicas, Sequence) or not replicas:
        raise _fail(f"[{index}]", replicas, "a non-empty list of replica URLs")
    return replicas, weight


def _replica(where: str, value: object) -> tuple[Host, bool | None]:
    if isinstance(value, Host):
        return value, None
    if not isinstance(value, str):
        raise _fail(where, value, "a replica URL like http://host:8123")
    text = value.strip()
    secure: bool | None = None
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in _SECURE:
            raise _fail(
                where,
                value,
                "a replica URL like http://host:8123",
                f" (scheme must be one of {', '.join(_SECURE)})",
            )
        secure = _SECURE[scheme.lower()]
        text = rest
    text = text.rstrip("/")
    if "@" in text or "/" in text or "?" in text or "," in text:
        raise _fail(
            where,
            redact_url(value),  # the message is printed and logged
            "a replica URL like http://host:8123",
            " (a replica names only scheme, host and port; user, password, database and "
            "options are the connection's and apply to every shard)",
        )
    try:
        host = parse_host(text, 8443 if secure else 8123)
    except ConfigError as exc:
        raise _fail(where, value, "a replica URL like http://host:8123", f" ({exc})") from None
    return host, secure
