"""Choosing what to label: signals, the budget, the policy, diversity, drift, scoring and routing.

Plain Python, no I/O: nothing here imports Kafka, Faust, ClickHouse, HTTP or the settings.
"""
