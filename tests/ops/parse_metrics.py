"""Parses an exposition from stdin with the official Python client's parsers
and prints the families as JSON: {name: {type, samples: [[name, labels,
value, exemplar-labels-or-null]]}}.

    python parse_metrics.py text < metrics.txt          # 0.0.4 text
    python parse_metrics.py openmetrics < metrics.txt   # OpenMetrics
"""
import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def main() -> None:
    parse = {"text": parse_text, "openmetrics": parse_openmetrics}[sys.argv[1]]
    families = {}
    for family in parse(sys.stdin.read()):
        families[family.name] = {
            "type": family.type,
            "samples": [
                [s.name, s.labels, s.value, s.exemplar.labels if s.exemplar else None]
                for s in family.samples
            ],
        }
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
