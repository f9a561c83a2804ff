"""node (Debian's nodejs) runs the rendered polkit rules. `.ci/run` installs it, so under CI=true a
missing node fails the test instead of skipping it silently."""

from __future__ import annotations

import os
import shutil

import pytest


def node_or_skip() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail("CI is set and node is missing: .ci/run installs nodejs for the polkit rule tests")
        pytest.skip("needs node (apt-get install nodejs) to run the polkit rule")
    return node


POLKIT_HARNESS = r"""
var rules = [];
var polkit = { Result: { YES: "yes" }, addRule: function (f) { rules.push(f); } };
%s
function decide(user, verb, unit, id) {
    var action = { id: id || "org.freedesktop.systemd1.manage-units",
                   lookup: function (k) { return { verb: verb, unit: unit }[k]; } };
    var out = undefined;
    rules.forEach(function (r) { var v = r(action, { user: user }); if (v !== undefined) out = v; });
    return out === undefined ? "no" : out;
}
var cases = JSON.parse(process.argv[1]);
console.log(JSON.stringify(cases.map(function (c) { return decide(c[0], c[1], c[2], c[3]); })));
"""


def polkit_decisions(rules: str, cases: list[list[str | None]]) -> list[str]:
    """Run the rule file in node against the polkit API shape; one "yes"/"no" per (user, verb, unit, id)."""
    import json
    import subprocess

    proc = subprocess.run(
        [node_or_skip(), "-e", POLKIT_HARNESS % rules, json.dumps(cases)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
