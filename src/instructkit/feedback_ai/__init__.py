"""Feedback without humans: behaviour specs (instruction-following acceptance tests) and AI labelers
(RLAIF / Constitutional AI). Both are labelers that are not people: they score responses, rank K of
them into the record contract's K-way rankings, and serve as scorers (`spec:FILE`, `ai:JUDGE:FILE`)
wherever instructkit takes one. docs/specs.md is the guide.

  yamlpos.py    YAML with line numbers (errors name file, line and key)
  checks.py     the assertions: contains, regex, word/sentence limits, JSON Schema, refusals, ...
  spec.py       the spec file: workflows, their prompts, their checks; a spec as a reward
  backends.py   responses from a local model directory or an OpenAI-compatible server (retries)
  run.py        `spec run` (pass rates, baseline gate) and ranking records from scores
  judge.py      the AI labeler: constitution, verdict log-likelihoods, endpoint verdicts, cache
  agreement.py  agreement with people, the sandbox panel or gold, in the labeling app's figures
  cli.py        `instructkit spec run | label | agree`, `instructkit ai-label`"""
