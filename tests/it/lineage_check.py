"""Checks Kiln's OpenLineage events against the OpenLineage Python client's
own model (openlineage-python: attrs classes generated from the spec).

Usage: lineage_check.py EVENTS.jsonl

Every event is built into the client's RunEvent or JobEvent, every facet
into the client's facet class: an unknown key, a missing required key or a
`_schemaURL` other than the class's own fails. Then the client serializes
the event again (its Serde, as its HTTP transport does), which must give back
what Kiln wrote (but for the producers and empty defaults it fills in). Prints the number of events checked.
"""

import json
import sys
import typing

import attr
from openlineage.client import event_v2, serde
from openlineage.client.generated import (
    column_lineage_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    sql_job,
)

FACETS = {
    "schema": schema_dataset.SchemaDatasetFacet,
    "columnLineage": column_lineage_dataset.ColumnLineageDatasetFacet,
    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
    "sql": sql_job.SQLJobFacet,
    "jobType": job_type_job.JobTypeJobFacet,
    "parent": parent_run.ParentRunFacet,
    "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
    "errorMessage": error_message_run.ErrorMessageRunFacet,
}


def fail(where, message):
    raise SystemExit(f"{where}: {message}")


def build(cls, value, where):
    """value (parsed JSON) as an instance of attrs class cls, strictly."""
    if not isinstance(value, dict):
        fail(where, f"expected an object for {cls.__name__}, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name.lstrip("_"): f for f in attr.fields(cls)}
    value = dict(value)
    producer = value.pop("_producer", None)
    schema_url = value.pop("_schemaURL", None)
    if producer is not None or schema_url is not None:
        expected = cls._get_schema()
        if schema_url != expected:
            fail(where, f"_schemaURL {schema_url!r}, the client's {cls.__name__} is {expected!r}")
    unknown = set(value) - set(fields)
    if unknown:
        fail(where, f"{cls.__name__} has no {sorted(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name in ("producer", "schemaURL") and cls in (event_v2.RunEvent, event_v2.JobEvent):
            if name == "producer":
                kwargs["producer"] = value.get("producer")
            continue
        if name not in value:
            if field.default is attr.NOTHING:
                fail(where, f"{cls.__name__} lacks required {name}")
            continue
        kwargs[name] = convert(hints[field.name], value[name], f"{where}.{name}", name)
    return cls(**kwargs)


def convert(hint, value, where, name):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return convert(options[0], value, where, name)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            fail(where, f"expected a list, got {value!r}")
        return [convert(args[0], v, f"{where}[{i}]", name) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            fail(where, f"expected an object, got {value!r}")
        if name in ("facets", "inputFacets", "outputFacets"):
            out = {}
            for key, facet in value.items():
                if key not in FACETS:
                    fail(where, f"unexpected facet {key}")
                out[key] = build(FACETS[key], facet, f"{where}.{key}")
            return out
        return {k: convert(args[1], v, f"{where}.{k}", name) for k, v in value.items()}
    if attr.has(hint):
        return build(hint, value, where)
    if hint is typing.Any:
        return value
    if isinstance(hint, type) and issubclass(hint, str) and hasattr(hint, "__members__"):
        return hint(value)
    if hint in (str, int, float, bool) and not isinstance(value, hint):
        fail(where, f"expected {hint.__name__}, got {value!r}")
    return value


def normalized(value):
    """value without what the client fills in itself: producers, schema
    URLs (checked above) and empty defaults."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("_producer", "schemaURL"):
                continue
            item = normalized(item)
            if item in ([], {}):
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def main():
    checked = 0
    with open(sys.argv[1], encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            event = json.loads(line)
            cls = event_v2.RunEvent if "eventType" in event else event_v2.JobEvent
            if event.get("schemaURL") != cls._get_schema():
                fail(f"event {n}", f"schemaURL {event.get('schemaURL')!r}")
            built = build(cls, event, f"event {n}")
            again = normalized(json.loads(serde.Serde.to_json(built)))
            original = normalized(event)
            if again != original:
                fail(f"event {n}", f"the client writes it back otherwise:\n{json.dumps(again, sort_keys=True)}\n{json.dumps(original, sort_keys=True)}")
            checked += 1
    print(checked)


if __name__ == "__main__":
    main()
