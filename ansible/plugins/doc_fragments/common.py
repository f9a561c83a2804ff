# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The options every llmctl.fleet module takes (plugins/module_utils/llmctl.py COMMON_ARGS).
    DOCUMENTATION = r"""
options:
  executable:
    description:
      - The llmctl executable on the managed host.
      - An absolute path, or a name looked up on the host's C(PATH).
      - The llmctl.fleet.host role passes C(llmctl_venv/bin/llmctl) when it installs llmctl.
    type: str
    default: llmctl
  home:
    description:
      - C(LLMCTL_HOME) for the llmctl run; all of llmctl's state (config, models, state) under one directory.
      - Unset, llmctl uses the mode's directories (C(/etc/llmctl) and C(/var/lib/llmctl), or the user's XDG dirs).
    type: path
  config:
    description:
      - The config file (llmctl's global C(--config)).
    type: path
  mode:
    description:
      - C(system) or C(user) mode (llmctl's global C(--system) or C(--user)).
      - Unset, llmctl decides (system mode when it runs as root).
    type: str
    choices: [system, user]
notes:
  - The module runs llmctl with C(--json) on the managed host and returns its JSON; llmctl's exit code decides
    whether the task fails (see the llmctl README's exit codes).
  - "Set these options once for a play with C(module_defaults: {group/llmctl.fleet.llmctl: {...}})."
requirements:
  - llmctl on the managed host
"""
