"""The online shadow model: features, learner, model families, committees, the snapshot format.

Plain Python, no I/O: nothing here imports Kafka, Faust, ClickHouse, HTTP or the settings.
"""
