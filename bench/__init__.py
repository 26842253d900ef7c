"""Benchmark harness: drive the real server over HTTP in each batching mode and report against targets.

``python -m bench`` (see ``bench/README.md``). Modules, one job each:

- :mod:`bench.loadgen`: asyncio httpx load generator (closed loop, open-loop Poisson, streamed TTFT)
- :mod:`bench.server`: the server as a child process (start-up time, memory, /metrics)
- :mod:`bench.bare`: the bare model in-process, one sentence at a time
- :mod:`bench.mfu`: analytic FLOPs and the measured matmul peak
- :mod:`bench.report`: statistics, target comparisons, JSON / markdown / plot
- :mod:`bench.run`: the command line and the orchestration
"""
