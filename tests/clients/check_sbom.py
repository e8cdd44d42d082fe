"""Checks a release's SBOM against the binary it describes.

    check_sbom.py BINARY SBOM

The SBOM must be valid CycloneDX 1.5 (cyclonedx-python-lib's strict
validator, with the schemas it ships) and must name every crate the binary
is built from: the list cargo-auditable embedded in the binary's `.dep-v0`
section (zlib-compressed JSON), read here with binutils' objcopy. Two
independent readers of one build: neither output is taken on trust.
"""

import json
import subprocess
import sys
import tempfile
import zlib

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

binary, sbom_path = sys.argv[1:3]

with tempfile.NamedTemporaryFile() as section:
    subprocess.run(
        ["objcopy", "--dump-section", f".dep-v0={section.name}", binary, "/dev/null"],
        check=True,
    )
    embedded = json.loads(zlib.decompress(section.read()))

built_from = {
    (p["name"], p["version"])
    for p in embedded["packages"]
    if p.get("kind", "runtime") == "runtime" and not p.get("root", False)
}
for crate in ("hyper", "rustls", "tokio", "kube-client"):
    assert any(name == crate for name, _ in built_from), f"{crate} is not in the binary's list"

text = open(sbom_path).read()
errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
assert errors is None, f"not valid CycloneDX 1.5: {errors}"
sbom = json.loads(text)


def components(items):
    for item in items:
        yield item
        yield from components(item.get("components", []))


named = {(c["name"], c.get("version")) for c in components(sbom["components"])}
missing = sorted(built_from - named)
assert not missing, f"in the binary but not in the SBOM: {missing}"
assert sbom["metadata"]["component"]["name"] == "kubegate"
print(f"{len(built_from)} crates in the binary, all {len(named)} in the SBOM")
