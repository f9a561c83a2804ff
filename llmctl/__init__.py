"""llmctl: operate hosts that run local LLMs.

Kept to the version only: `import llmctl` must stay cheap (cron runs `llmctl health` every minute).
"""

__version__ = "0.1.0"
