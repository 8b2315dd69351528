"""quotagate's benchmark. ``bench/run.py`` is the one command; its modules, in the order a run uses them:

  options.py       the command line -> Options (targets, rounds, windows, soak)
  targets.py       target names, TargetSpec/Target, the quotagate configs (a real team's, a minimal one)
  baseline.py      --baseline-ref: an older commit's tree in bench/.baseline/, run as one more quotagate target
  litellm_venv.py  LiteLLM's own virtualenv, its config and environment
  procs.py         Service: one child process in its own session; health wait; group stop
  machine.py       core pinning, machine facts, CPU and RSS of a process session from /proc
  stack.py         start and stop everything a run needs: mocks, Redis, relay, quotagate variants, LiteLLM
  scenarios.py     the scenarios and their request bodies
  measure.py       the load generator process (load.py --serve); priming, rounds, soak, the py-spy window
  pyspy.py         py-spy's raw stacks -> top frames
  stats.py         medians over rounds, added latency vs direct, ratios, issue-5 checks, current vs baseline
  report.py        the report as JSON and as markdown
  run.py           main()

Scripts of their own: load.py (the load generator), relay.py (the bare relay), count_cache.py,
sdk_suite.py (the SDK's tests through quotagate).
"""

from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
