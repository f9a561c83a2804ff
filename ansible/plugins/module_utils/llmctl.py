# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
"""What every llmctl.fleet module shares: the common options and running llmctl on the managed host.

The modules never import llmctl: they run its CLI (`--json`), so the host's llmctl, in whatever venv
it lives, is the one that acts, and its exit codes (README: 0 ok, 1 failed, 2 usage/config,
3 integrity; health 0/1/2/3) decide the task's outcome. Secrets travel in the environment of the
llmctl process (HF_TOKEN, OPENAI_API_KEY), never on its command line, and the options that carry
them are no_log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

# The options every module takes (documented in the llmctl.fleet.common doc fragment).
COMMON_ARGS = dict(
    executable=dict(type="str", default="llmctl"),
    home=dict(type="path"),
    config=dict(type="path"),
    mode=dict(type="str", choices=["system", "user"]),
)


def common_spec(**options):
    spec = dict(COMMON_ARGS)
    spec.update(options)
    return spec


def executable(module):
    """The llmctl executable: an absolute path as given, else looked up on the host's PATH."""
    exe = module.params["executable"]
    if os.path.isabs(os.path.expanduser(exe)):
        exe = os.path.expanduser(exe)
        if not os.access(exe, os.X_OK):
            module.fail_json(msg="llmctl executable not found or not executable: %s" % exe)
        return exe
    return module.get_bin_path(exe, required=True)


def base_argv(module):
    """llmctl plus the global options that come before the command."""
    argv = [executable(module)]
    if module.params.get("mode") == "system":
        argv.append("--system")
    elif module.params.get("mode") == "user":
        argv.append("--user")
    if module.params.get("config"):
        argv += ["--config", module.params["config"]]
    return argv


def environment(module, secrets=None):
    """The environment of an llmctl run: LLMCTL_HOME when given, no colour, and secrets (never logged)."""
    env = {"NO_COLOR": "1", "LC_ALL": "C.UTF-8"}
    if module.params.get("home"):
        env["LLMCTL_HOME"] = module.params["home"]
    for name, value in (secrets or {}).items():
        if value:
            env[name] = value
    return env


BOX = "\u2502\u256d\u256e\u2570\u256f\u2500"  # the frame Typer draws around a usage error


def error_line(stderr):
    """llmctl's one-line error (`Error: ...`, with its `Hint: ...`), else the last line of stderr
    (for a usage error Typer rejected before llmctl ran: the message inside its frame)."""
    lines = [ln.strip(BOX + " ").strip() for ln in (stderr or "").splitlines()]
    lines = [ln for ln in lines if ln]
    picked = [ln for ln in lines if ln.startswith(("Error:", "Hint:"))]
    if picked:
        return " ".join(picked)
    return lines[-1] if lines else ""


def parse_json(text):
    """The JSON document llmctl printed (an object or an array), or None when stdout is not JSON."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class Llmctl(object):
    """Runs llmctl for one module invocation and fails the task the way llmctl failed."""

    def __init__(self, module, secrets=None):
        self.module = module
        self.argv = base_argv(module)
        self.env = environment(module, secrets)

    def run(self, args, ok=(0,)):
        """Run `llmctl ARGS`; returns (rc, parsed JSON or None, stdout, stderr).

        An exit code outside `ok` fails the task with llmctl's error line and its exit code.
        """
        rc, out, err = self.module.run_command(self.argv + list(args), environ_update=self.env, check_rc=False)
        doc = parse_json(out)
        if rc not in ok:
            self.fail(args, rc, out, err, doc)
        return rc, doc, out, err

    def fail(self, args, rc, out, err, doc=None, msg=None, **extra):
        """Fail the task: llmctl's error line, its exit code, the command, and its JSON (`llmctl`) or stdout."""
        result = dict(
            msg=msg or error_line(err) or "llmctl exited %d" % rc, rc=rc, cmd=self.argv + list(args), stderr=err
        )
        if doc is not None:
            result["llmctl"] = doc
        else:
            result["stdout"] = out
        result.update(extra)
        self.module.fail_json(**result)
