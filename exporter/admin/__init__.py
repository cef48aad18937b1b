"""The admin tools: `junk-review`, `oversized`, `doctor` and `import-esm`.

They run once from the command line, print what they found and change a mailbox only when the
admin asks with `--yes`. `review_state` is also read by the `junk` check (the Junk-review
metrics); nothing else in the exporter imports from here.
"""
