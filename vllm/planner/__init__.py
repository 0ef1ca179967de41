"""Configuration planner (`vllm plan`): which layout of this machine's cores serves a
workload best, colocated or disaggregated prefill/decode.

    profile.py        time engine steps of chosen shapes here (engine_probe.py), per thread count
    cost_model.py     step time = linear in prefill tokens, attention pairs, decodes, context
    instance_cost.py  an instance's step time for its threads and TP size; KV transfer time
    layouts.py        candidate layouts: colocated TP=n, xPyD with TP sizes, fitting the cores
    sim_instance.py   one engine instance under our scheduler's policy
    simulate.py       discrete-event simulation of a deployment serving a workload
    sim_metrics.py    TTFT, TPOT, ITL, throughput and SLO attainment of a simulated run
    goodput.py        highest rate at which 90% of requests meet both SLOs (DistServe)
    recommend.py      price, simulate and rank the layouts
    report.py         the table and the JSON
"""
