"""Parses an OpenMetrics/Prometheus text exposition with the official
Python client's parser (independently of kubegate) and prints each sample
as `name{labels} value`, one per line. Exits non-zero if it does not parse.

Usage: python3 parse_metrics.py < metrics.txt
"""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
