#!/usr/bin/python3
"""Parses a Prometheus text exposition with Debian's python3-prometheus-client (a parser tprd's
authors did not write) and prints one canonical line per sample:
  <family> <type> <sample name>{<label>=<value>,...} <value>
labels sorted by name, each value as the parser gave it back with backslash and control
characters written as Python escapes (a newline as \\n), so that one sample stays one line.
Exit 1 (with the parser's message) when the text does not parse."""
import sys

from prometheus_client.parser import text_string_to_metric_families


def escape(value: str) -> str:
    return value.encode("unicode_escape").decode("ascii")


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={escape(v)}" for k, v in sorted(sample.labels.items()))
                print(f"{family.name} {family.type} {sample.name}{{{labels}}} {sample.value:g}")
    except Exception as error:  # the parser raises ValueError and others on bad input
        print(f"does not parse: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
