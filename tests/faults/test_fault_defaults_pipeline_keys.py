"""`chworkers config --defaults` lists every pipeline key, as it does every other setting.

Before, in a user trial of issues 14-16: the README says `chworkers config --defaults >
chworkers.toml` writes "every setting, commented, with its default", but the file ended
with a five-line example pipeline (whose source comment still read "stdin | file | http
| generator"): none of the pipeline keys of issues 14, 15 and 16 (`sharding_key`,
`schema`, `async_insert`, `timestamps`, `max_concurrent_inserts`,
`max_inserts_per_second`...) nor `[pipelines.redis]`/`[pipelines.nats]` appeared in it.
"""

from __future__ import annotations

import re
import tomllib

from chworkers.daemon import config
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.settings.declare import describe


def _keys() -> list[str]:
    return [d.key for d in describe(PipelineSettings)]


def test_every_pipeline_key_is_listed_with_its_variable() -> None:
    text = config.defaults_toml()
    keys = _keys()
    assert {"sharding_key", "schema", "async_insert", "timestamps"} <= set(keys)
    assert {"max_concurrent_inserts", "max_inserts_per_second", "redis.url"} <= set(keys)
    tail = text[text.index("# Every key a pipeline takes") :]
    for key in keys:
        section, _, name = key.rpartition(".")
        assert re.search(rf"^# {re.escape(name)} =", tail, re.M), key
        assert f"## env: CHWORKERS_PIPELINE_<NAME>_{key.upper().replace('.', '_')}\n" in tail
        if section:
            assert f"# [pipelines.{section}]\n" in tail, key
    assert "stdin | file | http | generator | redis | nats" in text
    # Still a file of defaults: the pipelines stay commented out.
    assert config.load(data=tomllib.loads(text), env={}).pipelines == ()


def test_the_pipeline_block_uncommented_is_a_valid_pipeline() -> None:
    text = config.defaults_toml()
    block = text[text.index("# [[pipelines]]\n## Unique name") :]
    # Explanations start with '## ': every other '# ' line is a table or a key.
    lines = [
        line[2:]
        for line in block.splitlines()
        if line.startswith("# ") and not line.endswith(" =") and " = ..." not in line
    ]
    data = tomllib.loads("\n".join(lines))
    (pipeline,) = data["pipelines"]
    pipeline.update(name="p", table="t")
    loaded = config.load(data=data, env={}).pipelines[0]
    default = config.load(data={"pipelines": [{"name": "p", "table": "t"}]}, env={}).pipelines[0]
    assert loaded == default
