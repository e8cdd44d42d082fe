"""Reads audit log files independently of kubegate and checks every line:
valid JSON, valid against docs/audit-event.schema.json, stages in order
per auditID, and timestamps that parse as RFC 3339.

Usage: python3 validate_audit.py SCHEMA FILE...
Prints "N events valid"; exits non-zero with the first problem otherwise.
"""

import json
import sys
from datetime import datetime

from jsonschema import Draft202012Validator

ORDER = {"RequestReceived": 0, "ResponseStarted": 1, "ResponseComplete": 2}


def main(schema_path, files):
    validator = Draft202012Validator(json.load(open(schema_path)))
    seen = {}
    count = 0
    for path in files:
        for number, line in enumerate(open(path), 1):
            event = json.loads(line)
            errors = sorted(validator.iter_errors(event), key=lambda e: e.path)
            if errors:
                sys.exit(f"{path}:{number}: {errors[0].message} at {list(errors[0].path)}")
            for field in ("requestReceivedTimestamp", "stageTimestamp"):
                datetime.fromisoformat(event[field].replace("Z", "+00:00"))
            stage = ORDER.get(event["stage"], 3)
            previous = seen.get(event["auditID"], -1)
            if stage <= previous:
                sys.exit(f"{path}:{number}: {event['stage']} after a later stage for {event['auditID']}")
            seen[event["auditID"]] = stage
            count += 1
    print(f"{count} events valid")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
