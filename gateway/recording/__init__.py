"""Recording: how the gateway's decisions and control actions become evidence in its log.

`evidence` is the `gateway.recorder.Recorder` over this replica's evidence log (the
`gateway.evidence` library), `decisions` turns one exchange into a decision record (the
data plane's recording stage), and `export` gathers what a forensic bundle carries
beside the records.
"""
