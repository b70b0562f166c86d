"""Benchmarks: `python -m egsw_rl.bench` (see `egsw_rl.bench.cli`), one module per
sub-benchmark:

    cli.py       the command line: --only steps,sync,reward,learner,peer,overlap,generate; --paper
    runner.py    what they share: Bench (options, Ray, the real trainer's runs, cached), compose,
                 workload, the model of a preset
    step.py      steps: where a training step's time goes, per phase; overlap: on vs off
    generate.py  the generator actor against the bare vLLM engine
    learner.py   the ZeRO-3 learner group alone: tokens/s and memory per rank
    sync.py      weight pushes per transport, per bucket and per tensor; memcpy / gloo baselines
    reward.py    grading throughput, the hostile batch, the share hidden behind generation
    peer.py      TRL's GRPOTrainer on the same workload (its child process: python -m egsw_rl.bench.peer)
    paper.py     the on-paper Qwen2.5-Math-7B step, split and colocated
    report.py    medians, tables, the JSON document and the machine's facts (not in table titles)

Importing the package imports nothing heavy; each sub-benchmark imports Ray, vLLM, DeepSpeed or
TRL when it runs.
"""
