"""Checks a krew plugin manifest as krew's index validation would, and
against the archives it points to.

    check_krew.py SCHEMA MANIFEST ARCHIVE_DIR

The manifest must validate against SCHEMA (deploy/krew/plugin.schema.json,
krew's rules), and each platform's archive (found in ARCHIVE_DIR by the
URI's last segment) must have the manifest's sha256, hold every file
operation's `from`, and leave `bin` in the installation directory.
"""

import fnmatch
import hashlib
import json
import os
import sys
import tarfile

import jsonschema
import yaml

schema_path, manifest_path, archive_dir = sys.argv[1:4]
manifest = yaml.safe_load(open(manifest_path))
jsonschema.Draft202012Validator(json.load(open(schema_path))).validate(manifest)

for platform in manifest["spec"]["platforms"]:
    archive = os.path.join(archive_dir, platform["uri"].rsplit("/", 1)[1])
    digest = hashlib.sha256(open(archive, "rb").read()).hexdigest()
    assert digest == platform["sha256"], f"{archive}: sha256 {digest}, manifest {platform['sha256']}"
    names = tarfile.open(archive).getnames()
    installed = set()
    for op in platform["files"]:
        matched = fnmatch.filter(names, op["from"])
        assert matched, f"{op['from']} is in no entry of {archive}"
        installed.update(os.path.normpath(os.path.join(op.get("to", "."), os.path.basename(m))) for m in matched)
    assert platform["bin"] in installed, f"bin {platform['bin']} is not installed: {sorted(installed)}"
print(f"{len(manifest['spec']['platforms'])} platform(s) valid")
