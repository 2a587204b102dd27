"""`fashion run` on this machine, one concern per module.

`runner` runs the DAG with kfp.local; `progress` shows it live; `logs` keeps one log file per step;
`results` reads what each step did from kfp's files; `server` keeps the local TF Serving-compatible
server; `summary` formats the end-of-run report; `run` ties them together for `fashion run`.
"""
