"""Job assembly, run set-up, statistics, the report and the ``kosmos`` command line.

Nothing below pipeline/ imports it: the contract it shares with the trainer lives in
contract/.
"""
